//! A [`PlanLocker`] on a coordination.k8s.io/v1 Lease, for runs inside a
//! cluster (several runner Jobs): mutual exclusion comes from the API server's
//! optimistic concurrency, the lease expires if its holder dies.

use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use rollback_core::error::{Error, LockHolder};
use rollback_core::{PlanLockGuard, PlanLocker};

use crate::client::{is_conflict, Conn};
use crate::permission::{explain_status, is_forbidden, Forbidden};

/// The verbs on leases a lock needs: read the holder, take a free plan,
/// renew and release.
const LEASE_VERBS: [&str; 3] = ["get", "create", "update"];

/// Locks plans with one Lease per plan (`rollback-plan-NAME`) in a namespace.
#[derive(Clone)]
pub struct LeaseLocker {
    conn: Conn,
    duration: Duration,
}

impl std::fmt::Debug for LeaseLocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseLocker")
            .field("namespace", &self.conn.namespace)
            .field("duration", &self.duration)
            .finish()
    }
}

impl LeaseLocker {
    /// A locker in the connection's namespace; the lease is renewed every
    /// third of `duration` and expires `duration` after its holder died.
    pub fn new(conn: Conn, duration: Duration) -> Self {
        LeaseLocker {
            conn,
            duration: duration.max(Duration::from_secs(3)),
        }
    }

    /// The Lease name for a plan.
    pub fn lease_name(plan: &str) -> String {
        let clean: String = plan
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let name = format!("rollback-plan-{}", clean.trim_matches('-'));
        name.chars()
            .take(63)
            .collect::<String>()
            .trim_end_matches('-')
            .to_string()
    }
}

fn identity(h: &LockHolder) -> String {
    serde_json::to_string(h).unwrap_or_default()
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn expired(l: &Lease) -> bool {
    let Some(spec) = &l.spec else { return true };
    if spec.holder_identity.as_deref().unwrap_or("").is_empty() {
        return true;
    }
    let (Some(renew), Some(secs)) = (&spec.renew_time, spec.lease_duration_seconds) else {
        return true;
    };
    let until = renew.0.as_second() + i64::from(secs);
    k8s_openapi::jiff::Timestamp::now().as_second() > until
}

fn holder_of(l: &Lease) -> LockHolder {
    let id = l
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default();
    serde_json::from_str(&id).unwrap_or(LockHolder {
        operator: id,
        host: "?".into(),
        pid: 0,
        since: String::new(),
        run_id: "?".into(),
    })
}

/// What a lock attempt is, for error messages.
fn taking(plan: &str, name: &str, namespace: &str) -> String {
    format!("taking the lock of plan `{plan}` (Lease {name} in namespace {namespace})")
}

/// The lease verbs the account may not use in the namespace, asked of the
/// API server (SelfSubjectAccessReview, which every authenticated account may
/// create). Checked before taking the lock: an account that may create a
/// Lease but not update it would hold the lock without renewing it, and the
/// lock would expire under a running plan. `None` when the review itself
/// cannot be made: the lock's own requests then tell.
async fn missing_lease_verbs(conn: &Conn) -> Option<Vec<&'static str>> {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(conn.client.clone());
    let reviews = LEASE_VERBS.map(|verb| {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some("coordination.k8s.io".into()),
                    resource: Some("leases".into()),
                    namespace: Some(conn.namespace.clone()),
                    verb: Some(verb.into()),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let api = api.clone();
        async move {
            let answer = api.create(&PostParams::default(), &review).await.ok()?;
            Some((verb, answer.status.is_some_and(|s| s.allowed)))
        }
    });
    let answers = futures::future::join_all(reviews).await;
    let answers: Option<Vec<_>> = answers.into_iter().collect();
    Some(
        answers?
            .into_iter()
            .filter(|(_, allowed)| !allowed)
            .map(|(verb, _)| verb)
            .collect(),
    )
}

fn missing_verbs_error(what: String, namespace: &str, verbs: &[&str]) -> Error {
    let f = Forbidden {
        user: "the account".into(),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        resource: "leases".into(),
        group: "coordination.k8s.io".into(),
        namespace: Some(namespace.to_string()),
    };
    Error::Permission {
        what,
        message: f.explain(),
    }
}

fn locked(plan: &str, holder: LockHolder) -> Error {
    Error::Locked {
        plan: plan.to_string(),
        holder: Box::new(holder),
    }
}

struct LeaseGuard {
    renew: tokio::task::JoinHandle<()>,
    api: Api<Lease>,
    name: String,
    identity: String,
}

impl LeaseGuard {
    /// Clears the holder, if it is still us. A failure leaves the Lease to
    /// expire at its duration.
    async fn clear(api: Api<Lease>, name: String, identity: String) {
        if let Ok(mut l) = api.get(&name).await {
            if l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(identity.as_str())
            {
                if let Some(spec) = l.spec.as_mut() {
                    spec.holder_identity = None;
                }
                let _ = api.replace(&name, &PostParams::default(), &l).await;
            }
        }
    }

    /// Stops renewing and hands over what `clear` needs, once.
    fn take(&mut self) -> Option<(Api<Lease>, String, String)> {
        self.renew.abort();
        if self.identity.is_empty() {
            return None;
        }
        Some((
            self.api.clone(),
            self.name.clone(),
            std::mem::take(&mut self.identity),
        ))
    }
}

#[async_trait]
impl PlanLockGuard for LeaseGuard {
    async fn release(mut self: Box<Self>) {
        if let Some((api, name, identity)) = self.take() {
            LeaseGuard::clear(api, name, identity).await;
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if let Some((api, name, identity)) = self.take() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(LeaseGuard::clear(api, name, identity));
            }
        }
    }
}

/// Renews the Lease every `every` while it is still held by `identity`.
fn spawn_renewal(
    api: Api<Lease>,
    name: String,
    identity: String,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Ok(mut l) = api.get(&name).await else {
                continue;
            };
            if l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) != Some(identity.as_str())
            {
                return;
            }
            if let Some(spec) = l.spec.as_mut() {
                spec.renew_time = Some(now());
            }
            let _ = api.replace(&name, &PostParams::default(), &l).await;
        }
    })
}

#[async_trait]
impl PlanLocker for LeaseLocker {
    async fn lock(
        &self,
        plan: &str,
        holder: &LockHolder,
    ) -> rollback_core::Result<Box<dyn PlanLockGuard>> {
        let api: Api<Lease> = Api::namespaced(self.conn.client.clone(), &self.conn.namespace);
        let name = Self::lease_name(plan);
        let id = identity(holder);
        let secs = self.duration.as_secs() as i32;
        let spec = LeaseSpec {
            holder_identity: Some(id.clone()),
            lease_duration_seconds: Some(secs),
            acquire_time: Some(now()),
            renew_time: Some(now()),
            ..LeaseSpec::default()
        };
        let what = taking(plan, &name, &self.conn.namespace);
        if let Some(missing) = missing_lease_verbs(&self.conn).await {
            if !missing.is_empty() {
                return Err(missing_verbs_error(what, &self.conn.namespace, &missing));
            }
        }
        let unavailable = |e: kube::Error| {
            if let (true, kube::Error::Api(status)) = (is_forbidden(&e), &e) {
                return Error::Permission {
                    what: what.clone(),
                    message: explain_status(status),
                };
            }
            let cause = match &e {
                kube::Error::Api(s) => format!("{} ({} {})", s.message, s.code, s.reason),
                other => other.to_string(),
            };
            locked(
                plan,
                LockHolder {
                    operator: format!(
                        "(unknown: the Lease {name} could not be read or written: {cause})"
                    ),
                    host: "?".into(),
                    pid: 0,
                    since: String::new(),
                    run_id: "?".into(),
                },
            )
        };
        match api.get_opt(&name).await.map_err(unavailable)? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                match api.create(&PostParams::default(), &lease).await {
                    Ok(_) => {}
                    Err(e) if is_conflict(&e) => {
                        let l = api.get(&name).await.map_err(unavailable)?;
                        return Err(locked(plan, holder_of(&l)));
                    }
                    Err(e) => return Err(unavailable(e)),
                }
            }
            Some(mut l) => {
                if !expired(&l) {
                    return Err(locked(plan, holder_of(&l)));
                }
                let transitions = l
                    .spec
                    .as_ref()
                    .and_then(|s| s.lease_transitions)
                    .unwrap_or(0);
                l.spec = Some(LeaseSpec {
                    lease_transitions: Some(transitions + 1),
                    ..spec
                });
                // The resourceVersion we read guards against a runner taking it at the same time.
                match api.replace(&name, &PostParams::default(), &l).await {
                    Ok(_) => {}
                    Err(e) if is_conflict(&e) => {
                        let l = api.get(&name).await.map_err(unavailable)?;
                        return Err(locked(plan, holder_of(&l)));
                    }
                    Err(e) => return Err(unavailable(e)),
                }
            }
        }
        let renew = spawn_renewal(api.clone(), name.clone(), id.clone(), self.duration / 3);
        Ok(Box::new(LeaseGuard {
            renew,
            api,
            name,
            identity: id,
        }))
    }
}
