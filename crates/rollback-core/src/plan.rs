//! Plans: what to run, in which order, within which budget; loaded from YAML
//! with every mistake reported at its `file:line:column`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Diagnostic, Error, Result};
use crate::event::Event;
use crate::registry::{BuildError, KindEntry, Registry};
use crate::step::{Notifier, OutputNames, Step, Verifier};
use crate::template::{self, Reference};
use crate::yaml::{self, display_path, Node, PathSeg, Pos, Value};

/// The budget when a plan names none: the seeds' "< 5 minutes" rule.
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(300);
/// How long one measurement of a check may take by default.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between measurements of a check that has a `within` window.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long one delivery of a notification may take by default.
pub const DEFAULT_NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);
/// First retry delay of a step with `retries` and no `backoff`.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(500);

/// `$USER`, else `$LOGNAME`, else the name of the process's user in
/// /etc/passwd, else `uid N`.
pub fn default_operator() -> String {
    if let Some(name) = ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|n| !n.is_empty()))
    {
        return name;
    }
    use std::os::unix::fs::MetadataExt;
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return "unknown".into();
    };
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                (fields.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// What to do when a step fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Start no new step; let running ones finish; report. (default)
    #[default]
    Abort,
    /// Skip the steps that depend on the failed one; run the rest.
    Continue,
    /// Abort, then undo the completed steps in reverse order of completion.
    Compensate,
}

/// What to do when the budget runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPolicy {
    /// Interrupt running steps and stop (then apply `on_failure`). (default)
    #[default]
    Abort,
    /// Record the overrun, announce it, and carry on.
    Continue,
}

/// Where a plan came from: its text and digest (recorded with every run).
#[derive(Debug, Clone)]
pub struct PlanSource {
    /// The file, if loaded from one.
    pub path: Option<PathBuf>,
    /// The file's text (holds `${...}` references, never resolved secrets).
    pub text: String,
    /// `sha256:<hex>` of the text.
    pub digest: String,
}

/// A step in a plan, with its scheduling settings.
#[derive(Debug, Clone)]
pub struct PlanStep {
    /// Unique id, used by `after:` and `${steps.ID.NAME}`.
    pub id: String,
    /// The kind name (`exec`, `k8s.rollout_undo`).
    pub kind: String,
    /// Ids of steps that must succeed before this one starts.
    pub after: Vec<String>,
    /// Limit for one attempt.
    pub timeout: Option<Duration>,
    /// Further attempts after a retryable error or a timeout.
    pub retries: u32,
    /// Delay before the first retry; doubles each time, with jitter.
    pub backoff: Duration,
    /// The step itself.
    pub step: Arc<dyn Step>,
}

impl PlanStep {
    /// A step with no dependencies, no timeout and no retries.
    pub fn new(id: impl Into<String>, kind: impl Into<String>, step: Arc<dyn Step>) -> Self {
        PlanStep {
            id: id.into(),
            kind: kind.into(),
            after: Vec::new(),
            timeout: None,
            retries: 0,
            backoff: DEFAULT_BACKOFF,
            step,
        }
    }

    /// Adds dependencies.
    pub fn after<I: IntoIterator<Item = S>, S: Into<String>>(mut self, ids: I) -> Self {
        self.after.extend(ids.into_iter().map(Into::into));
        self
    }

    /// Sets the per-attempt timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets retries and the first backoff.
    pub fn retries(mut self, retries: u32, backoff: Duration) -> Self {
        self.retries = retries;
        self.backoff = backoff;
        self
    }
}

/// A verification or preflight check in a plan.
#[derive(Debug, Clone)]
pub struct PlanCheck {
    /// Unique name within its list.
    pub name: String,
    /// The kind name.
    pub kind: String,
    /// Limit for one measurement.
    pub timeout: Duration,
    /// Keep measuring until it passes or this window closes (a service
    /// needs a moment after a rollback). `None`: measure once.
    pub within: Option<Duration>,
    /// Pause between measurements inside `within`.
    pub interval: Duration,
    /// The check itself.
    pub verifier: Arc<dyn Verifier>,
}

impl PlanCheck {
    /// A check measured once with the default timeout.
    pub fn new(
        name: impl Into<String>,
        kind: impl Into<String>,
        verifier: Arc<dyn Verifier>,
    ) -> Self {
        PlanCheck {
            name: name.into(),
            kind: kind.into(),
            timeout: DEFAULT_CHECK_TIMEOUT,
            within: None,
            interval: DEFAULT_CHECK_INTERVAL,
            verifier,
        }
    }
}

/// A notifier in a plan.
#[derive(Debug, Clone)]
pub struct PlanNotifier {
    /// The kind name.
    pub kind: String,
    /// Which event classes it receives (see [`Event::NOTIFIABLE`]).
    pub events: Vec<String>,
    /// Limit for one delivery.
    pub timeout: Duration,
    /// Further attempts after a failed delivery.
    pub retries: u32,
    /// The notifier itself.
    pub notifier: Arc<dyn Notifier>,
}

/// Named authority a plan requires before some of its steps (seed 003's
/// escalation chain): the run stops before those steps until someone in the
/// role approves, at the terminal or with `--approved-by ROLE=NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanApproval {
    /// The role, e.g. `engineering-manager`.
    pub role: String,
    /// Steps that may not start before this role approved.
    pub before: Vec<String>,
}

/// A trigger rule (`triggers:`): a check that, once it has failed
/// continuously for `hold_for`, starts the plan (`rollback watch`).
#[derive(Debug, Clone)]
pub struct PlanTrigger {
    /// The check; a failed measurement is a violation, an error (no data,
    /// unreachable) is unknown and never triggers.
    pub check: PlanCheck,
    /// How long the violation must hold (`for:`).
    pub hold_for: Duration,
}

/// How `rollback watch` evaluates the triggers (`watch:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchSettings {
    /// Time between evaluations (default 30s).
    pub interval: Duration,
    /// After the plan ran, no trigger fires again for this long (default 30m).
    pub cooldown: Duration,
}

impl Default for WatchSettings {
    fn default() -> Self {
        WatchSettings {
            interval: Duration::from_secs(30),
            cooldown: Duration::from_secs(30 * 60),
        }
    }
}

/// A validated plan, ready to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Name; the lock and history are per name.
    pub name: String,
    /// What the plan is for.
    pub description: Option<String>,
    /// Time allowed for the whole run.
    pub budget: Option<Duration>,
    /// What a failed step leads to.
    pub on_failure: FailurePolicy,
    /// What running out of budget leads to.
    pub on_budget_exceeded: BudgetPolicy,
    /// Most steps running at once.
    pub concurrency: usize,
    /// Plan variables after overrides.
    pub vars: BTreeMap<String, String>,
    /// Steps in file order.
    pub steps: Vec<PlanStep>,
    /// Checks after the steps.
    pub verify: Vec<PlanCheck>,
    /// Checks before any step; a failure stops the run.
    pub preflight: Vec<PlanCheck>,
    /// Who hears about the run.
    pub notify: Vec<PlanNotifier>,
    /// Roles that must approve before named steps.
    pub approvals: Vec<PlanApproval>,
    /// Rules that start the plan by themselves (`rollback watch`).
    pub triggers: Vec<PlanTrigger>,
    /// How the triggers are evaluated.
    pub watch: WatchSettings,
    /// Text and digest.
    pub source: PlanSource,
}

/// sha256 digest of a plan's text, as recorded in the journal.
pub fn digest(text: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())))
}

impl Plan {
    /// An empty plan built in code (embedding, tests); add steps, then call
    /// [`Plan::check`].
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        Plan {
            source: PlanSource {
                path: None,
                text: String::new(),
                digest: digest(&name),
            },
            name,
            description: None,
            budget: Some(DEFAULT_BUDGET),
            on_failure: FailurePolicy::Abort,
            on_budget_exceeded: BudgetPolicy::Abort,
            concurrency: default_concurrency(),
            vars: BTreeMap::new(),
            steps: Vec::new(),
            verify: Vec::new(),
            preflight: Vec::new(),
            notify: Vec::new(),
            approvals: Vec::new(),
            triggers: Vec::new(),
            watch: WatchSettings::default(),
        }
    }

    /// Roles that must approve before `step` starts.
    pub fn roles_before(&self, step: &str) -> Vec<String> {
        self.approvals
            .iter()
            .filter(|a| a.before.iter().any(|s| s == step))
            .map(|a| a.role.clone())
            .collect()
    }

    /// Checks a plan built in code: unique ids, known `after:` targets, no
    /// cycles. Plans loaded from files are checked while loading.
    pub fn check(&self) -> Result<()> {
        let mut diags = Vec::new();
        check_graph(&self.steps, &HashSet::new(), &mut |field, message, hint| {
            diags.push(Diagnostic {
                line: 0,
                column: 0,
                field,
                message,
                hint,
            })
        });
        if diags.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidPlan {
                file: self.name.clone(),
                diagnostics: diags,
            })
        }
    }

    /// Loads and validates a plan file. `vars` override the plan's `vars:`.
    pub fn load(
        path: impl AsRef<Path>,
        registry: &Registry,
        vars: &BTreeMap<String, String>,
    ) -> Result<Plan> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::PlanUnreadable {
            path: path.to_path_buf(),
            source,
        })?;
        let mut plan = Plan::from_yaml(&text, &path.display().to_string(), registry, vars)?;
        plan.source.path = Some(path.to_path_buf());
        Ok(plan)
    }

    /// Validates a plan given as text; `file` names it in messages.
    pub fn from_yaml(
        text: &str,
        file: &str,
        registry: &Registry,
        vars: &BTreeMap<String, String>,
    ) -> Result<Plan> {
        let root = yaml::parse(text).map_err(|e| Error::InvalidPlan {
            file: file.to_string(),
            diagnostics: vec![Diagnostic {
                line: e.pos.line,
                column: e.pos.column,
                field: "(syntax)".into(),
                message: e.message,
                hint: None,
            }],
        })?;
        let mut loader = Loader {
            root: &root,
            registry,
            diags: Vec::new(),
            declared_vars: HashSet::new(),
            declared_steps: HashSet::new(),
        };
        let plan = loader.plan(text, vars);
        if loader.diags.is_empty() {
            if let Some(plan) = plan {
                return Ok(plan);
            }
        }
        let mut diagnostics = loader.diags;
        diagnostics.sort_by_key(|d| (d.line, d.column));
        Err(Error::InvalidPlan {
            file: file.to_string(),
            diagnostics,
        })
    }

    /// The folder relative `${file:...}` paths are read from.
    pub fn base_dir(&self) -> Option<PathBuf> {
        self.source
            .path
            .as_ref()
            .and_then(|p| p.parent())
            .map(|p| p.to_path_buf())
    }

    /// Index of each step id.
    pub(crate) fn step_index(&self) -> HashMap<&str, usize> {
        self.steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.as_str(), i))
            .collect()
    }
}

fn default_concurrency() -> usize {
    16
}

/// Nearest candidate to `word`, if one is close enough to be a likely typo.
pub(crate) fn nearest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    nearest(word, candidates).map(|c| format!("did you mean `{c}`?"))
}

/// Checks ids, `after:` targets and cycles; calls `report(field, message, hint)`.
///
/// `declared` holds ids of entries that could not be built (already reported);
/// an `after:` naming one of them is not reported again.
fn check_graph(
    steps: &[PlanStep],
    declared: &HashSet<String>,
    report: &mut dyn FnMut(String, String, Option<String>),
) {
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, step) in steps.iter().enumerate() {
        if index.insert(step.id.as_str(), i).is_some() {
            report(
                format!("steps[{i}].id"),
                format!("step id `{}` is used twice", step.id),
                None,
            );
        }
    }
    let mut bad_edge = false;
    for (i, step) in steps.iter().enumerate() {
        for (j, dep) in step.after.iter().enumerate() {
            if dep == &step.id {
                report(
                    format!("steps[{i}].after[{j}]"),
                    format!("step `{dep}` cannot come after itself"),
                    None,
                );
                bad_edge = true;
            } else if declared.contains(dep) && !index.contains_key(dep.as_str()) {
                bad_edge = true;
            } else if !index.contains_key(dep.as_str()) {
                let hint = did_you_mean(dep, steps.iter().map(|s| s.id.as_str()));
                report(
                    format!("steps[{i}].after[{j}]"),
                    format!("no step with id `{dep}`"),
                    hint,
                );
                bad_edge = true;
            }
        }
    }
    if bad_edge {
        return;
    }
    // Iterative DFS; a back edge closes a cycle, which is named in full.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut mark = vec![Mark::New; steps.len()];
    for start in 0..steps.len() {
        if mark[start] != Mark::New {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        mark[start] = Mark::Open;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(dep) = steps[node].after.get(*next) {
                *next += 1;
                let d = index[dep.as_str()];
                match mark[d] {
                    Mark::New => {
                        mark[d] = Mark::Open;
                        stack.push((d, 0));
                    }
                    Mark::Open => {
                        let from = stack.iter().position(|(n, _)| *n == d).unwrap_or(0);
                        let mut names: Vec<&str> = stack[from..]
                            .iter()
                            .map(|(n, _)| steps[*n].id.as_str())
                            .collect();
                        // Each step on the DFS stack runs after the next one.
                        names.push(steps[d].id.as_str());
                        let cycle = names.join(" → ");
                        report(
                            format!("steps[{node}].after"),
                            format!("steps depend on each other in a cycle: {cycle} (each runs after the next)"),
                            Some("remove one of these `after:` entries".into()),
                        );
                    }
                    Mark::Done => {}
                }
            } else {
                mark[node] = Mark::Done;
                stack.pop();
            }
        }
    }
}

const PLAN_FIELDS: &[&str] = &[
    "name",
    "description",
    "budget",
    "on_failure",
    "on_budget_exceeded",
    "concurrency",
    "vars",
    "steps",
    "verify",
    "preflight",
    "notify",
    "approvals",
    "triggers",
    "watch",
];
const STEP_FIELDS: &[&str] = &["id", "kind", "after", "timeout", "retries", "backoff"];
const CHECK_FIELDS: &[&str] = &["name", "kind", "timeout", "within", "interval"];
const TRIGGER_FIELDS: &[&str] = &["name", "kind", "timeout", "within", "interval", "for"];
const NOTIFY_FIELDS: &[&str] = &["kind", "events", "timeout", "retries"];

struct Loader<'a> {
    root: &'a Node,
    registry: &'a Registry,
    diags: Vec<Diagnostic>,
    /// Every variable the plan declares, with or without a value.
    declared_vars: HashSet<String>,
    /// Every step id the plan declares, built or not.
    declared_steps: HashSet<String>,
}

/// Whether `text` holds a `${...}` reference (`$${` is a literal `${`).
fn holds_reference(text: &str) -> bool {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(1))
        .any(|i| bytes[i] == b'$' && bytes[i + 1] == b'{' && (i == 0 || bytes[i - 1] != b'$'))
}

fn key(k: &str) -> PathSeg {
    PathSeg::Key(k.to_string())
}

fn join(base: &[PathSeg], more: &[PathSeg]) -> Vec<PathSeg> {
    base.iter().chain(more).cloned().collect()
}

impl Loader<'_> {
    fn report_at(
        &mut self,
        pos: Pos,
        path: &[PathSeg],
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.diags.push(Diagnostic {
            line: pos.line,
            column: pos.column,
            field: if path.is_empty() {
                "(plan)".into()
            } else {
                display_path(path)
            },
            message: message.into(),
            hint,
        });
    }

    fn report(&mut self, path: &[PathSeg], message: impl Into<String>, hint: Option<String>) {
        let pos = self.root.locate(path);
        self.report_at(pos, path, message, hint);
    }

    /// Reports keys of a mapping that are not in `known` (or the kind's
    /// own fields, checked later by the kind).
    fn check_keys(&mut self, node: &Node, path: &[PathSeg], known: &[&str]) {
        if let Value::Map(entries) = &node.value {
            for (k, _) in entries {
                let name = k.as_str().unwrap_or_default();
                if !known.contains(&name) {
                    let hint = did_you_mean(name, known.iter().copied());
                    let p = join(path, &[key(name)]);
                    self.report_at(k.pos, &p, format!("unknown field `{name}`"), hint);
                }
            }
        }
    }

    fn string(&mut self, node: &Node, path: &[PathSeg]) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            _ => {
                self.report(
                    path,
                    format!("expected a string, found {}", node.type_name()),
                    None,
                );
                None
            }
        }
    }

    fn duration(&mut self, node: &Node, path: &[PathSeg]) -> Option<Duration> {
        match &node.value {
            Value::Str(s) => match s.parse::<crate::duration::HumanDuration>() {
                Ok(d) => Some(d.get()),
                Err(e) => {
                    self.report(path, e, None);
                    None
                }
            },
            Value::Int(i) => {
                self.report(
                    path,
                    format!("`{i}` has no unit"),
                    Some(format!("write `{i}s` or `{i}ms`")),
                );
                None
            }
            _ => {
                self.report(
                    path,
                    format!(
                        "expected a duration such as 30s, found {}",
                        node.type_name()
                    ),
                    None,
                );
                None
            }
        }
    }

    fn uint(&mut self, node: &Node, path: &[PathSeg], min: i64) -> Option<u64> {
        match node.value {
            Value::Int(i) if i >= min => u64::try_from(i).ok(),
            _ => {
                self.report(
                    path,
                    format!(
                        "expected a whole number >= {min}, found {}",
                        node.type_name()
                    ),
                    None,
                );
                None
            }
        }
    }

    fn choice<T: Copy>(
        &mut self,
        node: &Node,
        path: &[PathSeg],
        options: &[(&str, T)],
    ) -> Option<T> {
        let text = self.string(node, path)?;
        match options.iter().find(|(name, _)| *name == text) {
            Some((_, v)) => Some(*v),
            None => {
                let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
                let hint = did_you_mean(&text, names.iter().copied())
                    .or_else(|| Some(format!("one of: {}", names.join(", "))));
                self.report(path, format!("`{text}` is not a valid value"), hint);
                None
            }
        }
    }

    fn list<'n>(&mut self, node: &'n Node, path: &[PathSeg]) -> Option<&'n [Node]> {
        match &node.value {
            Value::Seq(items) => Some(items),
            Value::Null => Some(&[]),
            _ => {
                self.report(
                    path,
                    format!("expected a list, found {}", node.type_name()),
                    None,
                );
                None
            }
        }
    }

    fn plan(&mut self, text: &str, overrides: &BTreeMap<String, String>) -> Option<Plan> {
        let root = self.root;
        if !matches!(root.value, Value::Map(_)) {
            self.report(
                &[],
                format!(
                    "a plan is a mapping with `name:` and `steps:`, found {}",
                    root.type_name()
                ),
                None,
            );
            return None;
        }
        self.check_keys(root, &[], PLAN_FIELDS);

        let name = match root.get("name") {
            Some(n) => self.string(n, &[key("name")]).unwrap_or_default(),
            None => {
                self.report(
                    &[],
                    "missing field `name`",
                    Some("add `name: my-service` at the top".into()),
                );
                String::new()
            }
        };
        if !name.is_empty()
            && !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            self.report(
                &[key("name")],
                format!("`{name}` may hold only letters, digits, `-`, `_` and `.`"),
                None,
            );
        }
        let description = root
            .get("description")
            .and_then(|n| self.string(n, &[key("description")]));
        let budget = match root.get("budget") {
            Some(n) if n.value == Value::Null => None,
            Some(n) => self.duration(n, &[key("budget")]),
            None => Some(DEFAULT_BUDGET),
        };
        let on_failure = root
            .get("on_failure")
            .and_then(|n| {
                self.choice(
                    n,
                    &[key("on_failure")],
                    &[
                        ("abort", FailurePolicy::Abort),
                        ("continue", FailurePolicy::Continue),
                        ("compensate", FailurePolicy::Compensate),
                    ],
                )
            })
            .unwrap_or_default();
        let on_budget_exceeded = root
            .get("on_budget_exceeded")
            .and_then(|n| {
                self.choice(
                    n,
                    &[key("on_budget_exceeded")],
                    &[
                        ("abort", BudgetPolicy::Abort),
                        ("continue", BudgetPolicy::Continue),
                    ],
                )
            })
            .unwrap_or_default();
        let concurrency = root
            .get("concurrency")
            .and_then(|n| self.uint(n, &[key("concurrency")], 1))
            .map(|c| c as usize)
            .unwrap_or_else(default_concurrency);
        let vars = self.vars(root.get("vars"), overrides);

        let steps = match root.get("steps") {
            Some(n) => self.steps(n, &vars),
            None => {
                self.report(
                    &[],
                    "missing field `steps`",
                    Some("a plan needs at least one step".into()),
                );
                Vec::new()
            }
        };
        let step_ids: Vec<String> = steps.iter().map(|s| s.id.clone()).collect();
        let verify = self.checks(root.get("verify"), "verify", &vars, Some(&step_ids));
        let preflight = self.checks(root.get("preflight"), "preflight", &vars, None);
        let notify = self.notifiers(root.get("notify"), &vars, &step_ids);
        let approvals = self.approvals(root.get("approvals"), &step_ids);
        let triggers = self.triggers(root.get("triggers"), &vars);
        let watch = self.watch_settings(root.get("watch"));

        Some(Plan {
            name,
            description,
            budget,
            on_failure,
            on_budget_exceeded,
            concurrency,
            vars,
            steps,
            verify,
            preflight,
            notify,
            approvals,
            triggers,
            watch,
            source: PlanSource {
                path: None,
                text: text.to_string(),
                digest: digest(text),
            },
        })
    }

    fn vars(
        &mut self,
        node: Option<&Node>,
        overrides: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut vars = BTreeMap::new();
        let mut required = Vec::new();
        if let Some(node) = node {
            match &node.value {
                Value::Map(entries) => {
                    for (k, v) in entries {
                        let name = k.as_str().unwrap_or_default().to_string();
                        let path = [key("vars"), key(&name)];
                        match &v.value {
                            Value::Str(s) => {
                                if holds_reference(s) {
                                    self.report_at(
                                        v.pos,
                                        &path,
                                        "a variable holds a plain value: `${...}` is not resolved in `vars:`",
                                        Some(
                                            "write the reference where it is used (e.g. `url: ${env:DB_URL}`); \
                                             secrets read there are redacted, variables are journaled as they are"
                                                .into(),
                                        ),
                                    );
                                }
                                vars.insert(name, s.clone());
                            }
                            Value::Int(i) => {
                                vars.insert(name, i.to_string());
                            }
                            Value::Float(f) => {
                                vars.insert(name, f.to_string());
                            }
                            Value::Bool(b) => {
                                vars.insert(name, b.to_string());
                            }
                            Value::Null => required.push((name, k.pos)),
                            _ => self.report(&path, "a variable holds a single value", None),
                        }
                    }
                }
                Value::Null => {}
                _ => self.report(
                    &[key("vars")],
                    format!("expected a mapping, found {}", node.type_name()),
                    None,
                ),
            }
        }
        let declared: Vec<String> = vars
            .keys()
            .cloned()
            .chain(required.iter().map(|(n, _)| n.clone()))
            .collect();
        self.declared_vars = declared.iter().cloned().collect();
        for (name, value) in overrides {
            if !declared.contains(name) {
                let hint = did_you_mean(name, declared.iter().map(String::as_str)).or_else(|| {
                    Some(format!(
                        "declare it under `vars:` (declared: {})",
                        declared.join(", ")
                    ))
                });
                self.diags.push(Diagnostic {
                    line: 0,
                    column: 0,
                    field: format!("--var {name}"),
                    message: format!("the plan declares no variable `{name}`"),
                    hint,
                });
            } else {
                vars.insert(name.clone(), value.clone());
            }
        }
        for (name, pos) in required {
            if !vars.contains_key(&name) {
                self.report_at(
                    pos,
                    &[key("vars"), key(&name)],
                    format!("variable `{name}` has no value"),
                    Some(format!("pass --var {name}=VALUE")),
                );
            }
        }
        vars
    }

    /// Splits an entry into its common fields and the kind's configuration.
    fn split(&self, node: &Node, common: &[&str]) -> serde_json::Value {
        let mut config = serde_json::Map::new();
        if let Value::Map(entries) = &node.value {
            for (k, v) in entries {
                let name = k.as_str().unwrap_or_default();
                if !common.contains(&name) {
                    config.insert(name.to_string(), v.to_json());
                }
            }
        }
        serde_json::Value::Object(config)
    }

    fn build<T: ?Sized>(
        &mut self,
        entry: &KindEntry<T>,
        node: &Node,
        path: &[PathSeg],
        common: &[&str],
    ) -> Option<Arc<T>> {
        let mut config = self.split(node, common);
        let mut result = entry.build(config.clone());
        // `argv: [sleep, 5]`: YAML reads 5 as a number; where a kind wants a
        // string, a plain number or boolean is taken as its text.
        for _ in 0..256 {
            let Err(BuildError::Shape { path: rel, message }) = &result else {
                break;
            };
            if !message.contains("expected a string") || !coerce_to_string(&mut config, rel) {
                break;
            }
            result = entry.build(config.clone());
        }
        match result {
            Ok(built) => Some(built),
            Err(BuildError::Shape { path: rel, message }) => {
                let mut full = join(path, &rel);
                let mut hint = None;
                if let Some(rest) = message.strip_prefix("unknown field `") {
                    // serde: unknown field `x`, expected one of `a`, `b`
                    let mut names = rest.split('`').step_by(2);
                    let field = names.next().unwrap_or_default().to_string();
                    let candidates: Vec<&str> = names.chain(common.iter().copied()).collect();
                    hint = did_you_mean(&field, candidates.iter().copied());
                    if full.last() != Some(&PathSeg::Key(field.clone())) {
                        full.push(key(&field));
                    }
                } else if message.contains("expected a string") {
                    hint = Some("put the value in quotes".into());
                }
                self.report(&full, message, hint);
                None
            }
            Err(BuildError::Config(e)) => {
                let full = match &e.field {
                    Some(f) => join(path, &[key(f)]),
                    None => path.to_vec(),
                };
                self.report(&full, e.message, None);
                None
            }
        }
    }

    fn steps(&mut self, node: &Node, vars: &BTreeMap<String, String>) -> Vec<PlanStep> {
        let Some(items) = self.list(node, &[key("steps")]) else {
            return Vec::new();
        };
        if items.is_empty() {
            self.report(&[key("steps")], "a plan needs at least one step", None);
        }
        let mut steps = Vec::new();
        // Positions of entries whose step could be built, for reference checks.
        let mut built: Vec<(usize, &Node)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = vec![key("steps"), PathSeg::Index(i)];
            if !matches!(item.value, Value::Map(_)) {
                self.report(
                    &path,
                    format!(
                        "a step is a mapping with `id:` and `kind:`, found {}",
                        item.type_name()
                    ),
                    None,
                );
                continue;
            }
            let id = match item.get("id") {
                Some(n) => self.string(n, &join(&path, &[key("id")])),
                None => {
                    self.report(
                        &path,
                        "step has no `id`",
                        Some("add `id: some_name`".into()),
                    );
                    None
                }
            };
            if let Some(id) = &id {
                if id.is_empty()
                    || !id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    self.report(
                        &join(&path, &[key("id")]),
                        format!("step id `{id}` may hold only letters, digits, `_` and `-`"),
                        None,
                    );
                }
            }
            let kind = match item.get("kind") {
                Some(n) => self.string(n, &join(&path, &[key("kind")])),
                None => {
                    self.report(
                        &path,
                        "step has no `kind`",
                        Some(format!("one of: {}", self.step_kind_list())),
                    );
                    None
                }
            };
            let after = match item.get("after") {
                None => Vec::new(),
                Some(n) => match &n.value {
                    Value::Str(s) => vec![s.clone()],
                    Value::Seq(list) => list
                        .iter()
                        .enumerate()
                        .filter_map(|(j, d)| {
                            self.string(d, &join(&path, &[key("after"), PathSeg::Index(j)]))
                        })
                        .collect(),
                    _ => {
                        self.report(
                            &join(&path, &[key("after")]),
                            "expected a step id or a list of step ids",
                            None,
                        );
                        Vec::new()
                    }
                },
            };
            let timeout = item
                .get("timeout")
                .and_then(|n| self.duration(n, &join(&path, &[key("timeout")])));
            let retries = item
                .get("retries")
                .and_then(|n| self.uint(n, &join(&path, &[key("retries")]), 0))
                .map(|r| r as u32)
                .unwrap_or(0);
            let backoff = item
                .get("backoff")
                .and_then(|n| self.duration(n, &join(&path, &[key("backoff")])))
                .unwrap_or(DEFAULT_BACKOFF);
            let (Some(id), Some(kind)) = (id, kind) else {
                continue;
            };
            let step = match self.registry.steps.get(&kind) {
                Some(entry) => self.build(entry, item, &path, STEP_FIELDS),
                None => {
                    let hint = did_you_mean(&kind, self.registry.steps.keys().map(String::as_str))
                        .or_else(|| {
                            self.registry.verifiers.contains_key(&kind).then(|| {
                                format!(
                                    "`{kind}` is a check: list it under `verify:` or `preflight:`"
                                )
                            })
                        })
                        .or_else(|| Some(format!("known step kinds: {}", self.step_kind_list())));
                    self.report(
                        &join(&path, &[key("kind")]),
                        format!("unknown step kind `{kind}`"),
                        hint,
                    );
                    None
                }
            };
            let Some(step) = step else { continue };
            built.push((steps.len(), item));
            steps.push(PlanStep {
                id,
                kind,
                after,
                timeout,
                retries,
                backoff,
                step,
            });
        }
        let declared: HashSet<String> = items
            .iter()
            .filter_map(|i| i.get("id").and_then(Node::as_str))
            .map(str::to_string)
            .collect();
        let before = self.diags.len();
        check_graph(&steps, &declared, &mut |field, message, hint| {
            self.diags.push(Diagnostic {
                line: 0,
                column: 0,
                field,
                message,
                hint,
            })
        });
        // check_graph speaks of indexes among built steps; give its findings positions.
        for d in &mut self.diags[before..] {
            let (pos, field) = graph_position(self.root, &built, &d.field);
            d.line = pos.line;
            d.column = pos.column;
            d.field = field;
        }
        if self.diags.len() == before {
            for (n, item) in &built {
                let i = items
                    .iter()
                    .position(|x| std::ptr::eq(x, *item))
                    .unwrap_or(0);
                let path = vec![key("steps"), PathSeg::Index(i)];
                self.check_references(
                    item,
                    &path,
                    STEP_FIELDS,
                    vars,
                    RefScope::Step {
                        steps: &steps,
                        me: *n,
                    },
                );
            }
        }
        steps
    }

    fn step_kind_list(&self) -> String {
        self.registry
            .steps
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn check_references(
        &mut self,
        node: &Node,
        path: &[PathSeg],
        common: &[&str],
        vars: &BTreeMap<String, String>,
        scope: RefScope<'_>,
    ) {
        for (rel, text, pos) in node.strings() {
            if let Some(PathSeg::Key(first)) = rel.first() {
                if common.contains(&first.as_str()) {
                    continue;
                }
            }
            let full = join(path, &rel);
            let refs = match template::references(text) {
                Ok(refs) => refs,
                Err(e) => {
                    self.report_at(pos, &full, e.to_string(), None);
                    continue;
                }
            };
            for r in refs {
                match r {
                    Reference::Var(name)
                        if !vars.contains_key(&name) && !self.declared_vars.contains(&name) =>
                    {
                        let hint =
                            did_you_mean(&name, vars.keys().map(String::as_str)).or_else(|| {
                                Some(format!(
                                    "add `{name}` under `vars:` or pass --var {name}=VALUE"
                                ))
                            });
                        self.report_at(
                            pos,
                            &full,
                            format!("`${{var:{name}}}`: no such variable"),
                            hint,
                        );
                    }
                    Reference::StepOutput { step, output } => {
                        if let Err((message, hint)) =
                            scope.check(&step, &output, &self.declared_steps)
                        {
                            self.report_at(pos, &full, message, hint);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn checks(
        &mut self,
        node: Option<&Node>,
        section: &str,
        vars: &BTreeMap<String, String>,
        step_ids: Option<&[String]>,
    ) -> Vec<PlanCheck> {
        self.checks_with(node, section, vars, step_ids, CHECK_FIELDS)
            .into_iter()
            .map(|(c, _)| c)
            .collect()
    }

    /// Triggers: checks with a `for:` duration they must fail for.
    fn triggers(
        &mut self,
        node: Option<&Node>,
        vars: &BTreeMap<String, String>,
    ) -> Vec<PlanTrigger> {
        let checks = self.checks_with(node, "triggers", vars, None, TRIGGER_FIELDS);
        let mut out = Vec::new();
        for (check, item) in checks {
            let path = vec![key("triggers"), PathSeg::Index(item)];
            let node = node.and_then(|n| match &n.value {
                Value::Seq(items) => items.get(item),
                _ => None,
            });
            let hold_for = match node.and_then(|n| n.get("for")) {
                Some(n) => self
                    .duration(n, &join(&path, &[key("for")]))
                    .unwrap_or_default(),
                None => {
                    self.report(
                        &path,
                        "trigger has no `for`",
                        Some("say how long the check must fail before the plan runs, e.g. `for: 10m`".into()),
                    );
                    Duration::ZERO
                }
            };
            out.push(PlanTrigger { check, hold_for });
        }
        out
    }

    fn checks_with(
        &mut self,
        node: Option<&Node>,
        section: &str,
        vars: &BTreeMap<String, String>,
        step_ids: Option<&[String]>,
        common: &[&str],
    ) -> Vec<(PlanCheck, usize)> {
        let Some(node) = node else { return Vec::new() };
        let Some(items) = self.list(node, &[key(section)]) else {
            return Vec::new();
        };
        let mut checks: Vec<(PlanCheck, usize)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = vec![key(section), PathSeg::Index(i)];
            if !matches!(item.value, Value::Map(_)) {
                self.report(
                    &path,
                    format!(
                        "a check is a mapping with `kind:`, found {}",
                        item.type_name()
                    ),
                    None,
                );
                continue;
            }
            let Some(kind) = (match item.get("kind") {
                Some(n) => self.string(n, &join(&path, &[key("kind")])),
                None => {
                    let kinds = self
                        .registry
                        .verifiers
                        .keys()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ");
                    self.report(
                        &path,
                        "check has no `kind`",
                        Some(format!("one of: {kinds}")),
                    );
                    None
                }
            }) else {
                continue;
            };
            let name = item
                .get("name")
                .and_then(|n| self.string(n, &join(&path, &[key("name")])));
            let timeout = item
                .get("timeout")
                .and_then(|n| self.duration(n, &join(&path, &[key("timeout")])))
                .unwrap_or(DEFAULT_CHECK_TIMEOUT);
            let within = item
                .get("within")
                .and_then(|n| self.duration(n, &join(&path, &[key("within")])));
            let interval = item
                .get("interval")
                .and_then(|n| self.duration(n, &join(&path, &[key("interval")])))
                .unwrap_or(DEFAULT_CHECK_INTERVAL);
            let verifier = match self.registry.verifiers.get(&kind) {
                Some(entry) => self.build(entry, item, &path, common),
                None => {
                    let hint =
                        did_you_mean(&kind, self.registry.verifiers.keys().map(String::as_str))
                            .or_else(|| {
                                self.registry.steps.contains_key(&kind).then(|| {
                                    format!("`{kind}` is a step kind: list it under `steps:`")
                                })
                            });
                    self.report(
                        &join(&path, &[key("kind")]),
                        format!("unknown check kind `{kind}`"),
                        hint,
                    );
                    None
                }
            };
            let scope = match step_ids {
                Some(ids) => RefScope::AfterSteps(ids),
                None => RefScope::NoSteps,
            };
            self.check_references(item, &path, common, vars, scope);
            let Some(verifier) = verifier else { continue };
            let name = name.unwrap_or_else(|| {
                let mut candidate = kind.clone();
                let mut n = 2;
                while checks.iter().any(|(c, _)| c.name == candidate) {
                    candidate = format!("{kind}-{n}");
                    n += 1;
                }
                candidate
            });
            if checks.iter().any(|(c, _)| c.name == name) {
                self.report(
                    &join(&path, &[key("name")]),
                    format!("check name `{name}` is used twice in `{section}`"),
                    None,
                );
            }
            checks.push((
                PlanCheck {
                    name,
                    kind,
                    timeout,
                    within,
                    interval,
                    verifier,
                },
                i,
            ));
        }
        checks
    }

    fn watch_settings(&mut self, node: Option<&Node>) -> WatchSettings {
        let mut settings = WatchSettings::default();
        let Some(node) = node else { return settings };
        let path = [key("watch")];
        if !matches!(node.value, Value::Map(_)) {
            self.report(
                &path,
                format!(
                    "expected a mapping with `interval` and `cooldown`, found {}",
                    node.type_name()
                ),
                None,
            );
            return settings;
        }
        self.check_keys(node, &path, &["interval", "cooldown"]);
        if let Some(d) = node
            .get("interval")
            .and_then(|n| self.duration(n, &[key("watch"), key("interval")]))
        {
            if d.is_zero() {
                self.report(
                    &[key("watch"), key("interval")],
                    "the interval must be longer than zero",
                    None,
                );
            } else {
                settings.interval = d;
            }
        }
        if let Some(d) = node
            .get("cooldown")
            .and_then(|n| self.duration(n, &[key("watch"), key("cooldown")]))
        {
            settings.cooldown = d;
        }
        settings
    }

    fn approvals(&mut self, node: Option<&Node>, step_ids: &[String]) -> Vec<PlanApproval> {
        let Some(node) = node else { return Vec::new() };
        let Some(items) = self.list(node, &[key("approvals")]) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = vec![key("approvals"), PathSeg::Index(i)];
            self.check_keys(item, &path, &["role", "before"]);
            let role = match item.get("role") {
                Some(n) => self.string(n, &join(&path, &[key("role")])),
                None => {
                    self.report(
                        &path,
                        "approval has no `role`",
                        Some("e.g. `role: engineering-manager`".into()),
                    );
                    None
                }
            };
            let mut before = Vec::new();
            match item.get("before") {
                None => self.report(
                    &path,
                    "approval has no `before`",
                    Some("list the step ids it guards".into()),
                ),
                Some(n) => {
                    let p = join(&path, &[key("before")]);
                    let list: Vec<&Node> = match &n.value {
                        Value::Seq(items) => items.iter().collect(),
                        _ => vec![n],
                    };
                    for (j, entry) in list.into_iter().enumerate() {
                        let ep = if matches!(n.value, Value::Seq(_)) {
                            join(&p, &[PathSeg::Index(j)])
                        } else {
                            p.clone()
                        };
                        if let Some(id) = self.string(entry, &ep) {
                            if step_ids.contains(&id) || self.declared_steps.contains(&id) {
                                before.push(id);
                            } else {
                                let hint = did_you_mean(&id, step_ids.iter().map(String::as_str));
                                self.report(&ep, format!("no step with id `{id}`"), hint);
                            }
                        }
                    }
                }
            }
            if let Some(role) = role.filter(|r| !r.trim().is_empty()) {
                out.push(PlanApproval { role, before });
            }
        }
        out
    }

    fn notifiers(
        &mut self,
        node: Option<&Node>,
        vars: &BTreeMap<String, String>,
        step_ids: &[String],
    ) -> Vec<PlanNotifier> {
        let Some(node) = node else { return Vec::new() };
        let Some(items) = self.list(node, &[key("notify")]) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = vec![key("notify"), PathSeg::Index(i)];
            let Some(kind) = item
                .get("kind")
                .and_then(|n| self.string(n, &join(&path, &[key("kind")])))
            else {
                if item.get("kind").is_none() {
                    let kinds = self
                        .registry
                        .notifiers
                        .keys()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ");
                    self.report(
                        &path,
                        "notifier has no `kind`",
                        Some(format!("one of: {kinds}")),
                    );
                }
                continue;
            };
            let events = match item.get("events") {
                None => Vec::new(),
                Some(n) => {
                    let p = join(&path, &[key("events")]);
                    let list = self.list(n, &p).unwrap_or(&[]);
                    let mut events = Vec::new();
                    for (j, e) in list.iter().enumerate() {
                        let ep = join(&p, &[PathSeg::Index(j)]);
                        if let Some(name) = self.string(e, &ep) {
                            if Event::NOTIFIABLE.contains(&name.as_str()) {
                                events.push(name);
                            } else {
                                let hint = did_you_mean(&name, Event::NOTIFIABLE.iter().copied())
                                    .or_else(|| {
                                        Some(format!("one of: {}", Event::NOTIFIABLE.join(", ")))
                                    });
                                self.report(
                                    &ep,
                                    format!("`{name}` is not an event notifiers receive"),
                                    hint,
                                );
                            }
                        }
                    }
                    events
                }
            };
            let timeout = item
                .get("timeout")
                .and_then(|n| self.duration(n, &join(&path, &[key("timeout")])))
                .unwrap_or(DEFAULT_NOTIFY_TIMEOUT);
            let retries = item
                .get("retries")
                .and_then(|n| self.uint(n, &join(&path, &[key("retries")]), 0))
                .unwrap_or(2) as u32;
            let notifier = match self.registry.notifiers.get(&kind) {
                Some(entry) => self.build(entry, item, &path, NOTIFY_FIELDS),
                None => {
                    let known: Vec<&str> =
                        self.registry.notifiers.keys().map(String::as_str).collect();
                    let hint = did_you_mean(&kind, known.iter().copied()).or_else(|| {
                        Some(if known.is_empty() {
                            "no notifier kinds are compiled into this build".to_string()
                        } else {
                            format!("known notifier kinds: {}", known.join(", "))
                        })
                    });
                    self.report(
                        &join(&path, &[key("kind")]),
                        format!("unknown notifier kind `{kind}`"),
                        hint,
                    );
                    None
                }
            };
            self.check_references(
                item,
                &path,
                NOTIFY_FIELDS,
                vars,
                RefScope::AfterSteps(step_ids),
            );
            if let Some(notifier) = notifier {
                let events = if item.get("events").is_none() {
                    notifier
                        .default_events()
                        .iter()
                        .map(|s| s.to_string())
                        .collect()
                } else {
                    events
                };
                out.push(PlanNotifier {
                    kind,
                    events,
                    timeout,
                    retries,
                    notifier,
                });
            }
        }
        out
    }
}

/// Replaces the number or boolean at `path` by its text; false if there is none.
fn coerce_to_string(config: &mut serde_json::Value, path: &[PathSeg]) -> bool {
    let mut value = config;
    for seg in path {
        value = match (seg, value) {
            (PathSeg::Key(k), serde_json::Value::Object(map)) => match map.get_mut(k) {
                Some(v) => v,
                None => return false,
            },
            (PathSeg::Index(i), serde_json::Value::Array(items)) => match items.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    let text = match value {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Bool(b) => b.to_string(),
        _ => return false,
    };
    *value = serde_json::Value::String(text);
    true
}

/// Maps a `steps[i]...` field from [`check_graph`] (indexes among built
/// steps) back to the entry in the file.
fn graph_position(root: &Node, built: &[(usize, &Node)], field: &str) -> (Pos, String) {
    let parse = || -> Option<(usize, String)> {
        let rest = field.strip_prefix("steps[")?;
        let (n, tail) = rest.split_once(']')?;
        Some((n.parse().ok()?, tail.to_string()))
    };
    let Some((n, tail)) = parse() else {
        return (root.pos, field.to_string());
    };
    let Some((_, node)) = built.iter().find(|(i, _)| *i == n) else {
        return (root.pos, field.to_string());
    };
    let items = match root.get("steps").map(|s| &s.value) {
        Some(Value::Seq(items)) => items,
        _ => return (node.pos, field.to_string()),
    };
    let file_index = items
        .iter()
        .position(|x| std::ptr::eq(x, *node))
        .unwrap_or(n);
    let mut path = vec![key("steps"), PathSeg::Index(file_index)];
    // tail is like ".after[1]" or ".id"
    for part in tail.split('.').filter(|p| !p.is_empty()) {
        match part.split_once('[') {
            Some((name, idx)) => {
                path.push(key(name));
                if let Ok(i) = idx.trim_end_matches(']').parse() {
                    path.push(PathSeg::Index(i));
                }
            }
            None => path.push(key(part)),
        }
    }
    (root.locate(&path), display_path(&path))
}

/// Which `${steps.ID.NAME}` references a place may make.
enum RefScope<'a> {
    /// A step: only steps it (transitively) runs after.
    Step { steps: &'a [PlanStep], me: usize },
    /// Verification and notifications: any step.
    AfterSteps(&'a [String]),
    /// Preflight: none, no step has run yet.
    NoSteps,
}

impl RefScope<'_> {
    /// `declared` holds ids of steps that exist in the file but could not be
    /// built; references to them were already reported through that step.
    fn check(
        &self,
        step: &str,
        output: &str,
        declared: &HashSet<String>,
    ) -> std::result::Result<(), (String, Option<String>)> {
        match self {
            RefScope::NoSteps => Err((
                format!("`${{steps.{step}.{output}}}`: preflight checks run before any step"),
                Some("use a plan variable or an environment reference here".into()),
            )),
            RefScope::AfterSteps(ids) => {
                if ids.iter().any(|s| s == step) {
                    Ok(())
                } else {
                    Err((
                        format!("`${{steps.{step}.{output}}}`: no step with id `{step}`"),
                        did_you_mean(step, ids.iter().map(String::as_str)),
                    ))
                }
            }
            RefScope::Step { steps, me } => {
                let Some(target) = steps.iter().position(|s| s.id == step) else {
                    if declared.contains(step) {
                        return Ok(());
                    }
                    return Err((
                        format!("`${{steps.{step}.{output}}}`: no step with id `{step}`"),
                        did_you_mean(step, steps.iter().map(|s| s.id.as_str())),
                    ));
                };
                if !runs_after(steps, *me, target) {
                    return Err((
                        format!(
                            "`${{steps.{step}.{output}}}`: step `{}` does not run after `{step}`, so its output may not exist yet",
                            steps[*me].id
                        ),
                        Some(format!("add `{step}` to this step's `after:`")),
                    ));
                }
                match steps[target].step.outputs() {
                    OutputNames::Any => Ok(()),
                    names @ OutputNames::Fixed(list) if !names.allows(output) => Err((
                        format!(
                            "`${{steps.{step}.{output}}}`: a `{}` step has no output `{output}`",
                            steps[target].kind
                        ),
                        did_you_mean(output, list.iter().copied())
                            .or_else(|| Some(format!("its outputs: {}", list.join(", ")))),
                    )),
                    OutputNames::Fixed(_) => Ok(()),
                }
            }
        }
    }
}

/// Whether step `me` depends, directly or not, on step `target`.
fn runs_after(steps: &[PlanStep], me: usize, target: usize) -> bool {
    let index: HashMap<&str, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let mut seen = HashSet::new();
    let mut todo = vec![me];
    while let Some(n) = todo.pop() {
        for dep in &steps[n].after {
            if let Some(&d) = index.get(dep.as_str()) {
                if d == target {
                    return true;
                }
                if seen.insert(d) {
                    todo.push(d);
                }
            }
        }
    }
    false
}
