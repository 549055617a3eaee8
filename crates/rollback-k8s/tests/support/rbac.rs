//! A ServiceAccount of the test's namespace with exactly the RBAC rules a
//! test gives it, and a kubeconfig that authenticates as it (its token from
//! the token controller): what a runner Job with a narrower Role sees.

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use serde_json::{json, Value};

use super::Cluster;

/// An account of the namespace and a kubeconfig file for it.
pub struct Account {
    /// The ServiceAccount's name.
    pub name: String,
    /// A kubeconfig authenticating as it, in the test's folder.
    pub kubeconfig: String,
}

impl Cluster {
    /// Creates ServiceAccount `name` bound to a Role holding `rules` (none
    /// when empty) and returns a kubeconfig that authenticates as it.
    pub async fn account(&self, name: &str, rules: Value) -> Account {
        let post = PostParams::default();
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &self.ns);
        accounts
            .create(
                &post,
                &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
            )
            .await
            .expect("create service account");
        if rules.as_array().is_some_and(|r| !r.is_empty()) {
            let roles: Api<k8s_openapi::api::rbac::v1::Role> =
                Api::namespaced(self.client.clone(), &self.ns);
            roles
                .create(
                    &post,
                    &serde_json::from_value(json!({"metadata": {"name": name}, "rules": rules}))
                        .unwrap(),
                )
                .await
                .expect("create role");
            let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> =
                Api::namespaced(self.client.clone(), &self.ns);
            let binding = json!({
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": self.ns}]
            });
            bindings
                .create(&post, &serde_json::from_value(binding).unwrap())
                .await
                .expect("create role binding");
        }
        // The token controller writes the account's token Secret.
        let secret_name = poll("the account's token secret", || async {
            let account = accounts.get_opt(name).await.ok().flatten()?;
            account.secrets?.first()?.name.clone()
        })
        .await;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns);
        let token = poll("the account's token", || async {
            let secret = secrets.get_opt(&secret_name).await.ok().flatten()?;
            let token = secret.data?.get("token")?.0.clone();
            Some(String::from_utf8(token).unwrap())
        })
        .await;
        let admin = std::fs::read_to_string(&self.kubeconfig).unwrap();
        // The same kubeconfig with the account's token in place of the admin's.
        let text: Vec<String> = admin
            .lines()
            .map(|line| match line.split_once("token:") {
                Some((indent, _)) if indent.trim().is_empty() => format!("{indent}token: {token}"),
                _ => line.to_string(),
            })
            .collect();
        let text = text.join("\n") + "\n";
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        std::fs::write(&path, text.as_bytes()).unwrap();
        Account {
            name: name.to_string(),
            kubeconfig: path.display().to_string(),
        }
    }
}

/// Polls `check` (every 50 ms, up to 60 s) until it has a value — for set-up
/// only, like [`super::eventually`].
async fn poll<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..1200 {
        if let Some(value) = check().await {
            return value;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}
