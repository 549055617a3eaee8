//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const ABOUT: &str =
    "Run rollback plans: fast, inside a time budget, verified, journaled, resumable.";

const LONG_ABOUT: &str = "\
Run rollback plans: fast, inside a time budget, verified, journaled, resumable.

A plan is a YAML file of steps (with `after:` dependencies, so independent
steps run in parallel), checks that prove the rollback worked, and a budget.
Every run is journaled in the state directory; a run that dies can be resumed
without repeating completed steps.

Typical use:
  rollback validate plans/order-service.yaml
  rollback plan plans/order-service.yaml            # dry run: what would change
  rollback run plans/order-service.yaml --reason \"5xx spike after 2.4.1\"
  rollback drill plans/order-service.yaml           # timed rehearsal with a report
  rollback history
  rollback resume last                              # continue a run that died

Try it now, with no external service: rollback quickstart";

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// For people: progress on stderr, a summary on stdout.
    Human,
    /// One JSON document on stdout; progress, if any, on stderr.
    Json,
}

/// The `rollback` command.
#[derive(Debug, Parser)]
#[command(name = "rollback", version, about = ABOUT, long_about = LONG_ABOUT, after_help = crate::exit::TABLE)]
pub struct Cli {
    /// Where runs are journaled [default: $XDG_STATE_HOME/rollback, else ~/.local/state/rollback]
    #[arg(long, global = true, env = "ROLLBACK_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Journal in PostgreSQL instead of the state directory, so several
    /// runners share one history; the plan lock is then a Postgres advisory
    /// lock. Example: postgres://rollback@db.internal/ops
    #[arg(
        long,
        global = true,
        env = "ROLLBACK_JOURNAL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub journal: Option<String>,

    /// Take plan locks as Kubernetes Leases in this namespace (in-cluster
    /// config when run as a Job, else the kubeconfig), so runners in
    /// different pods or machines exclude each other.
    #[arg(
        long,
        global = true,
        env = "ROLLBACK_LEASE_NAMESPACE",
        value_name = "NAMESPACE"
    )]
    pub lease_namespace: Option<String>,

    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value = "human")]
    pub output: OutputFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by commands that load a plan.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The plan file (YAML).
    pub plan: PathBuf,

    /// Set a plan variable, overriding its `vars:` value: --var service=orders
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
}

/// Options shared by commands that run a plan.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Who runs it; recorded in the journal.
    #[arg(long, env = "ROLLBACK_OPERATOR", value_name = "NAME")]
    pub operator: Option<String>,

    /// Approve every `confirm` step up front (needed when there is no terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,

    /// Record that ROLE approved, for the plan's `approvals:` (repeatable):
    /// --approved-by engineering-manager=amara. Without it a terminal run asks.
    #[arg(long = "approved-by", value_name = "ROLE=NAME")]
    pub approved_by: Vec<String>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a plan file: syntax, kinds, fields, `after:` cycles, references.
    ///
    /// Every mistake is reported as FILE:LINE:COLUMN with the field at fault and,
    /// where there is one, the name you probably meant.
    Validate(PlanArgs),

    /// Dry run: show what each step would change, changing nothing.
    #[command(alias = "preview")]
    Plan(PlanArgs),

    /// Run a plan for real.
    ///
    /// Steps run as soon as the steps they come `after:` have succeeded. The run
    /// is journaled before and after every step; if the process dies, continue
    /// with `rollback resume RUN`. Ctrl-C stops scheduling new steps and lets
    /// running ones finish; a second Ctrl-C quits at once.
    Run {
        /// The plan.
        #[command(flatten)]
        plan: PlanArgs,
        /// Why you are rolling back; recorded and announced.
        #[arg(long, short = 'r')]
        reason: String,
        /// What started the run, when not a person (e.g. an alert name).
        #[arg(long)]
        trigger: Option<String>,
        /// Operator and approvals.
        #[command(flatten)]
        run: RunArgs,
    },

    /// Rehearse a plan and write a timed report (JSON and Markdown).
    ///
    /// A drill is a real run, marked as a drill in the journal. It passes when
    /// every step and check succeeds within the plan's budget. Run it against
    /// staging, monthly, as the procedures require.
    Drill {
        /// The plan.
        #[command(flatten)]
        plan: PlanArgs,
        /// Why; recorded in the report.
        #[arg(long, short = 'r', default_value = "scheduled rollback drill")]
        reason: String,
        /// Operator and approvals.
        #[command(flatten)]
        run: RunArgs,
    },

    /// Continue a run that died or was interrupted, without repeating completed steps.
    ///
    /// RUN is a run id from `rollback history`, or `last` for the newest
    /// unfinished run. Any runner of the same journal can resume it (with
    /// `--journal postgres://...`, not only the one that started it). Programs
    /// the dead runner left running are ended first; then the step that was
    /// running when the run stopped runs again, towards the target it chose
    /// the first time (kept in the journal as its intent).
    Resume {
        /// Run id, or `last`.
        run_id: String,
        /// Run STEP as if for the first time although the intent it kept is
        /// missing from the journal (repeatable). Check the step's target first:
        /// without its intent the step recomputes "previous" from what it sees.
        #[arg(long, value_name = "STEP")]
        fresh: Vec<String>,
        /// The programs the dead runner started on HOST have ended (or HOST is
        /// down); needed when resuming on another host than the one that ran
        /// them (repeatable, or comma-separated).
        #[arg(long, value_name = "HOST", value_delimiter = ',')]
        programs_ended_on: Vec<String>,
        /// Operator and approvals.
        #[command(flatten)]
        run: RunArgs,
    },

    /// The pre-deployment gate: is there a proven rollback for this plan?
    ///
    /// Checks, with evidence: the plan validates; every step's dry run succeeds
    /// (so its rollback target — previous revision, image, version, backup —
    /// exists where the kind can see it); the plan's `preflight:` checks pass
    /// (e.g. a `file` check that a backup is recent, an `exec` check running
    /// `pg_restore --list` on it); notifiers are reachable; and a drill of this
    /// exact plan passed (or, with --drill-max-age, of any version within that
    /// age). Exits 0 when every item passes, 6 otherwise: put it in the deploy
    /// pipeline before the deploy step.
    Preflight {
        /// The plan.
        #[command(flatten)]
        plan: PlanArgs,
        /// Accept a passing drill of an earlier version of the plan if it is
        /// at most this old (e.g. 31d); by default only this plan text counts.
        #[arg(long, value_name = "AGE")]
        drill_max_age: Option<humantime::Duration>,
        /// Do not require a drill (e.g. for the very first deployment).
        #[arg(long)]
        no_drill: bool,
    },

    /// Watch the plan's `triggers:` and run the plan when one holds.
    ///
    /// Each trigger is a check (e.g. a `prometheus` query with `at_most: 0.05`)
    /// with a `for:` duration. When a check has failed without interruption for
    /// its duration, the plan runs once, under the plan lock, with the reason
    /// `trigger: RULE = VALUE`; then the watch cools down (`watch.cooldown`).
    /// State is kept in the state directory, so `--once` from cron accumulates
    /// `for:` across invocations.
    Watch {
        /// The plan.
        #[command(flatten)]
        plan: PlanArgs,
        /// Evaluate once, run the plan if due, and exit (for cron).
        #[arg(long)]
        once: bool,
        /// Operator and approvals for the runs it starts.
        #[command(flatten)]
        run: RunArgs,
    },

    /// List past drills per plan: when, time used against the budget, pass or fail.
    Drills {
        /// Only drills of this plan.
        #[arg(long)]
        plan: Option<String>,
    },

    /// The report of a run, rebuilt from its journal (so any runner of a
    /// shared journal can produce it): Markdown, self-contained HTML (with the
    /// timeline of the steps against the budget) or JSON.
    Report {
        /// Run id, or `last`.
        run_id: String,
        /// md, html or json.
        #[arg(long, default_value = "md", value_parser = ["md", "html", "json"])]
        format: String,
        /// Write it to this file instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<std::path::PathBuf>,
    },

    /// List past runs, newest first.
    History {
        /// Only runs of this plan.
        #[arg(long)]
        plan: Option<String>,
        /// At most this many.
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: usize,
    },

    /// Show one run: who, why, each step's outcome and time, each check.
    Show {
        /// Run id, or `last`.
        run_id: String,
    },

    /// Print the JSON Schema of plan files (for editors).
    Schema,

    /// List the step, check and notifier kinds this build knows.
    Kinds,

    /// A complete local rollback drill, no external service needed.
    ///
    /// Sets up a git repository holding a service's config, starts a small local
    /// HTTP service, "deploys" a broken config (the service turns unhealthy),
    /// then runs examples/quickstart/plan.yaml as a drill: the config is
    /// restored from git, the service reloads it, and its health is verified
    /// over HTTP. Prints the drill report.
    Quickstart {
        /// Where to set it up [default: STATE_DIR/quickstart]
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },

    /// (internal) The quickstart's demo service.
    #[command(hide = true)]
    DemoService {
        /// Its config file.
        #[arg(long)]
        config: PathBuf,
        /// Port on 127.0.0.1 (0: any free port; the chosen one is printed).
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
}
