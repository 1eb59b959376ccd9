//! The exec provider: `COMMAND... present FQDN VALUE` adds a TXT record,
//! `COMMAND... cleanup FQDN VALUE` removes that one value. Exit status 0 is
//! success; otherwise the last lines of its stderr are the provider's
//! answer. The hook must add, not replace: a wildcard and its apex put two
//! values at the same name.

use std::process::Stdio;
use std::time::Duration;

const HOOK_TIMEOUT: Duration = Duration::from_secs(120);

pub(crate) async fn run(
    command: &[String],
    action: &str,
    fqdn: &str,
    value: &str,
) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..])
        .args([action, fqdn, value])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| format!("could not start the hook {}: {e}", command[0]))?;
    let out = match tokio::time::timeout(HOOK_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return Err(format!("the hook {} failed to run: {e}", command[0])),
        Err(_) => {
            return Err(format!(
                "the hook {} did not finish {action} within {}s",
                command[0],
                HOOK_TIMEOUT.as_secs()
            ));
        }
    };
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    let status = match out.status.code() {
        Some(c) => format!("exit status {c}"),
        None => "killed by a signal".into(),
    };
    Err(format!(
        "the hook {} {action} {fqdn} failed ({status}){}",
        command[0],
        if tail.is_empty() {
            String::new()
        } else {
            format!(": {}", tail.join(" / "))
        }
    ))
}
