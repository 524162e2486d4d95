//! Provisioners: how a dedicated runner for one long job comes into being and goes away.
//!
//! The server holds the job's claim and hands it to the runner it launches: the runner
//! (`wafer worker --lane long --max-jobs 1` with the claim in `WAFER_CLAIM` and the claim's
//! credential in `WAFER_RUNNER_TOKEN`, which reaches that job only) starts the job,
//! heartbeats, finishes and acks it through the server, then exits. A provisioner only launches
//! that command somewhere and tears it down: [`LocalProvisioner`] as a child process,
//! [`CommandProvisioner`] through operator commands (a cloud CLI that creates a VM, say), and
//! [`KubernetesProvisioner`] as a batch/v1 Job rendered from a template, and
//! [`crate::dispatch::vm::VmProvisioner`] as a local runner that runs its job in a microVM.

use crate::config::{CommandProvisionerConfig, KubernetesProvisionerConfig};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use wafer_core::JobId;

/// What launching a runner needs.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    /// The job the runner runs.
    pub job: JobId,
    /// The runner's command line (program first), for provisioners that run it as is.
    pub command: Vec<String>,
    /// The runner's environment: the server URL, the claim and the claim's credential.
    /// Secrets among them never go on a command line or into logs.
    pub env: Vec<(String, String)>,
}

/// A launched runner, as its provisioner knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerHandle(pub String);

/// Why a runner could not be launched or torn down.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProvisionError(pub String);

/// Launches and tears down dedicated runners.
#[async_trait::async_trait]
pub trait Provisioner: Send + Sync + 'static {
    /// The provisioner's name, for logs and job reasons.
    fn kind(&self) -> &'static str;
    /// Launches a runner for one job; returns once it is launched (not when it has started
    /// the job: the caller waits for that, with a deadline).
    async fn launch(&self, req: &LaunchRequest) -> Result<RunnerHandle, ProvisionError>;
    /// Removes a runner, whether it finished, failed or never started.
    async fn teardown(&self, handle: &RunnerHandle) -> Result<(), ProvisionError>;
    /// Whether the runner still exists; None when the provisioner cannot tell (the job's
    /// timeout then bounds how long it is waited for).
    async fn alive(&self, handle: &RunnerHandle) -> Option<bool> {
        let _ = handle;
        None
    }
}

/// A child `wafer worker` process per job on this machine (the default).
#[derive(Default)]
pub struct LocalProvisioner {
    children: Mutex<HashMap<String, tokio::process::Child>>,
}

#[async_trait::async_trait]
impl Provisioner for LocalProvisioner {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn launch(&self, req: &LaunchRequest) -> Result<RunnerHandle, ProvisionError> {
        let (program, args) = req
            .command
            .split_first()
            .ok_or_else(|| ProvisionError("no runner command".into()))?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args);
        crate::dispatch::workers::child_environment(&mut cmd, &req.env);
        let child = cmd
            .spawn()
            .map_err(|e| ProvisionError(format!("starting {program}: {e}")))?;
        let handle = format!("pid-{}", child.id().unwrap_or(0));
        self.children
            .lock()
            .expect("children")
            .insert(handle.clone(), child);
        Ok(RunnerHandle(handle))
    }

    async fn alive(&self, handle: &RunnerHandle) -> Option<bool> {
        let mut children = self.children.lock().expect("children");
        let child = children.get_mut(&handle.0)?;
        Some(matches!(child.try_wait(), Ok(None)))
    }

    async fn teardown(&self, handle: &RunnerHandle) -> Result<(), ProvisionError> {
        let child = self.children.lock().expect("children").remove(&handle.0);
        if let Some(mut child) = child {
            // It exits by itself after its one job; one that hangs is killed.
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        Ok(())
    }
}

/// Runs `argv` with `env`, feeding `stdin`, within `timeout`; its standard output on success.
async fn run_command(
    argv: &[String],
    env: &[(String, String)],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<String, ProvisionError> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| ProvisionError("no command configured".into()))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| ProvisionError(format!("starting {program}: {e}")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input)
            .await
            .map_err(|e| ProvisionError(format!("writing to {program}: {e}")))?;
    }
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| {
            ProvisionError(format!(
                "{program} did not finish within {} ms",
                timeout.as_millis()
            ))
        })?
        .map_err(|e| ProvisionError(format!("running {program}: {e}")))?;
    if !out.status.success() {
        // What the command said is the operator's, not the tenant's: a launch script that
        // traces itself prints the runner's credentials. It goes to the server log (with the
        // secrets it was given taken out), and the job's error only says where to look.
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: String = err
            .chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        tracing::warn!(
            program = %program,
            status = %out.status,
            stderr = %redact(tail.trim(), env),
            "a provisioner command failed"
        );
        return Err(ProvisionError(format!(
            "{program} failed ({}); what it printed is in the server log",
            out.status
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The variables of a runner's environment whose values are secrets.
const SECRET_VARS: [&str; 3] = ["WAFER_RUNNER_TOKEN", "WAFER_QUEUE_URL", "WAFER_CLAIM"];

/// `text` with the values of the secret variables of `env` replaced by `***`.
fn redact(text: &str, env: &[(String, String)]) -> String {
    let mut out = text.to_owned();
    for (k, v) in env {
        if SECRET_VARS.contains(&k.as_str()) && !v.is_empty() {
            out = out.replace(v.as_str(), "***");
        }
    }
    out
}

/// Shell-quotes a command line, for `WAFER_RUNNER_COMMAND`.
fn shell_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Operator commands: `launch` gets the job id, the runner command line and the runner's
/// environment in its environment (`WAFER_JOB_ID`, `WAFER_RUNNER_COMMAND`, `WAFER_SERVER_URL`,
/// `WAFER_RUNNER_TOKEN`, `WAFER_CLAIM`, …) and prints a handle; `teardown` gets
/// `WAFER_RUNNER_HANDLE` and `WAFER_JOB_ID`.
pub struct CommandProvisioner {
    config: CommandProvisionerConfig,
    jobs: Mutex<HashMap<String, String>>,
}

impl CommandProvisioner {
    /// A provisioner with `config`.
    pub fn new(config: CommandProvisionerConfig) -> Self {
        Self {
            config,
            jobs: Mutex::new(HashMap::new()),
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.timeout_ms.max(1))
    }
}

#[async_trait::async_trait]
impl Provisioner for CommandProvisioner {
    fn kind(&self) -> &'static str {
        "command"
    }

    async fn launch(&self, req: &LaunchRequest) -> Result<RunnerHandle, ProvisionError> {
        let mut env = req.env.clone();
        env.push(("WAFER_JOB_ID".into(), req.job.as_str().into()));
        env.push(("WAFER_RUNNER_COMMAND".into(), shell_line(&req.command)));
        let out = run_command(&self.config.launch, &env, None, self.timeout()).await?;
        let handle = out
            .lines()
            .next()
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .unwrap_or(req.job.as_str())
            .to_owned();
        self.jobs
            .lock()
            .expect("jobs")
            .insert(handle.clone(), req.job.as_str().to_owned());
        Ok(RunnerHandle(handle))
    }

    async fn teardown(&self, handle: &RunnerHandle) -> Result<(), ProvisionError> {
        if self.config.teardown.is_empty() {
            return Ok(());
        }
        let job = self
            .jobs
            .lock()
            .expect("jobs")
            .remove(&handle.0)
            .unwrap_or_default();
        let env = vec![
            ("WAFER_RUNNER_HANDLE".to_owned(), handle.0.clone()),
            ("WAFER_JOB_ID".to_owned(), job),
        ];
        run_command(&self.config.teardown, &env, None, self.timeout())
            .await
            .map(|_| ())
    }
}

/// A Kubernetes batch/v1 Job per long job, rendered from a JSON template whose string values
/// may hold `{{name}}`, `{{namespace}}`, `{{image}}`, `{{job_id}}`, `{{server_url}}`,
/// `{{claim}}` and `{{secret}}`, and applied with `kubectl apply -f -` together with a Secret
/// of the same name that holds the claim's credential (key `credential`): the credential is
/// not rendered into the Job, whose template refers to the Secret (`{{secret}}`). Both go
/// at teardown.
pub struct KubernetesProvisioner {
    config: KubernetesProvisionerConfig,
    template: serde_json::Value,
}

impl KubernetesProvisioner {
    /// Loads the template; fails at start when it is missing or not JSON.
    pub fn new(config: KubernetesProvisionerConfig) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(&config.template).map_err(|e| {
            anyhow::anyhow!(
                "reading the runner template {}: {e}",
                config.template.display()
            )
        })?;
        let template = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "the runner template {} is not JSON: {e}",
                config.template.display()
            )
        })?;
        Ok(Self { config, template })
    }

    /// The Kubernetes name of the runner of `job` (DNS-1123: lowercase, at most 63).
    pub fn name_of(job: &JobId) -> String {
        let hex = job.as_str().trim_start_matches("job_");
        format!("wafer-runner-{}", &hex[..hex.len().min(20)])
    }

    /// What is applied for `req`: a `v1` List of the Secret with the claim's credential and
    /// the rendered Job.
    pub fn render(&self, req: &LaunchRequest) -> serde_json::Value {
        let var = |name: &str| {
            req.env
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let name = Self::name_of(&req.job);
        let values: HashMap<&str, String> = HashMap::from([
            ("name", name.clone()),
            ("namespace", self.config.namespace.clone()),
            ("image", self.config.image.clone()),
            ("job_id", req.job.as_str().to_owned()),
            ("server_url", self.config.server_url.clone()),
            ("claim", var("WAFER_CLAIM")),
            ("secret", name.clone()),
        ]);
        let secret = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": self.config.namespace,
                "labels": {
                    "app.kubernetes.io/part-of": "wafer",
                    "wafer.dev/job": req.job.as_str(),
                },
            },
            "type": "Opaque",
            "stringData": { "credential": var("WAFER_RUNNER_TOKEN") },
        });
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "List",
            "items": [secret, substitute(&self.template, &values)],
        })
    }
}

/// Replaces `{{key}}` in every string of `v`; structure is untouched, so a value can never
/// change the object's shape.
fn substitute(v: &serde_json::Value, values: &HashMap<&str, String>) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => {
            let mut out = s.clone();
            for (k, val) in values {
                out = out.replace(&format!("{{{{{k}}}}}"), val);
            }
            Value::String(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| substitute(x, values)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), substitute(x, values)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[async_trait::async_trait]
impl Provisioner for KubernetesProvisioner {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    async fn launch(&self, req: &LaunchRequest) -> Result<RunnerHandle, ProvisionError> {
        let object = self.render(req);
        let mut argv = self.config.kubectl.clone();
        argv.extend(["apply".into(), "-f".into(), "-".into()]);
        let body = serde_json::to_vec(&object).expect("objects serialize");
        run_command(&argv, &[], Some(&body), Duration::from_secs(60)).await?;
        Ok(RunnerHandle(Self::name_of(&req.job)))
    }

    async fn teardown(&self, handle: &RunnerHandle) -> Result<(), ProvisionError> {
        let mut argv = self.config.kubectl.clone();
        argv.extend([
            "delete".into(),
            format!("job/{}", handle.0),
            format!("secret/{}", handle.0),
            "--namespace".into(),
            self.config.namespace.clone(),
            "--ignore-not-found".into(),
            "--wait=false".into(),
        ]);
        run_command(&argv, &[], None, Duration::from_secs(60))
            .await
            .map(|_| ())
    }
}

/// The template shipped in `deploy/`, for tests of rendering.
pub fn shipped_template() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/runner-job.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_template_renders_a_runner_job() {
        let p = KubernetesProvisioner::new(KubernetesProvisionerConfig {
            template: shipped_template(),
            namespace: "jobs".into(),
            image: "registry.example/wafer:1".into(),
            ..Default::default()
        })
        .unwrap();
        let job = JobId::generate();
        let req = LaunchRequest {
            job: job.clone(),
            command: vec!["wafer".into()],
            env: vec![
                ("WAFER_CLAIM".into(), "{\"a\":\"b\"}".into()),
                ("WAFER_RUNNER_TOKEN".into(), "wrc.credential".into()),
            ],
        };
        let list = p.render(&req);
        assert_eq!(list["kind"], "List");
        let secret = &list["items"][0];
        assert_eq!(secret["kind"], "Secret");
        assert_eq!(secret["stringData"]["credential"], "wrc.credential");
        let o = &list["items"][1];
        assert_eq!(o["apiVersion"], "batch/v1");
        assert_eq!(o["kind"], "Job");
        let name = KubernetesProvisioner::name_of(&job);
        assert_eq!(o["metadata"]["name"], name.as_str());
        assert!(name.len() <= 63 && name.starts_with("wafer-runner-"));
        assert_eq!(o["metadata"]["namespace"], "jobs");
        assert_eq!(o["metadata"]["labels"]["wafer.dev/job"], job.as_str());
        let spec = &o["spec"];
        assert_eq!(spec["backoffLimit"], 0, "Wafer retries, not Kubernetes");
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        let c = &pod["containers"][0];
        assert_eq!(c["image"], "registry.example/wafer:1");
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(args.starts_with(&["worker"]), "{args:?}");
        assert!(args.windows(2).any(|w| w == ["--lane", "long"]), "{args:?}");
        let env = c["env"].as_array().unwrap();
        let find = |n: &str| env.iter().find(|e| e["name"] == n).cloned().unwrap();
        assert_eq!(find("WAFER_CLAIM")["value"], "{\"a\":\"b\"}");
        // The credential comes from the job's Secret, never rendered into the Job.
        let from = &find("WAFER_RUNNER_TOKEN")["valueFrom"]["secretKeyRef"];
        assert_eq!(from["name"], secret["metadata"]["name"]);
        assert_eq!(from["key"], "credential");
        assert_eq!(secret["metadata"]["name"], name.as_str());
        assert!(!o.to_string().contains("wrc.credential"));
        assert!(
            !o.to_string().contains("{{"),
            "every placeholder is filled: {o}"
        );
    }

    #[test]
    fn substitution_never_changes_the_shape() {
        let t = serde_json::json!({"a": "{{x}}", "b": ["{{x}}-y"], "c": 1});
        let values = HashMap::from([("x", "\"}, {\"evil\": 1".to_owned())]);
        let o = substitute(&t, &values);
        assert_eq!(o["a"], "\"}, {\"evil\": 1");
        assert_eq!(o["b"][0], "\"}, {\"evil\": 1-y");
        assert_eq!(o.as_object().unwrap().len(), 3);
    }

    #[test]
    fn shell_lines_quote_every_argument() {
        assert_eq!(
            shell_line(&["a b".into(), "it's".into()]),
            r"'a b' 'it'\''s'"
        );
    }
}
