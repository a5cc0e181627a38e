//! `cargo xtask deploy-check`: the Kubernetes manifests of deploy/kubernetes
//! checked offline, as far as a cluster would refuse them or the tool would
//! fail in them: against the API schemas, strictly (an unknown field is an
//! error, where an API server may drop it with a warning), and the
//! DaemonSet's arguments against the binary's own parser.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::setup;

/// kubernetes-validate from PyPI, pinned: the schemas it ships are what the
/// manifests are checked against.
const VALIDATOR_VERSION: &str = "1.37.0";
/// The oldest and newest Kubernetes that validator has schemas for: the
/// manifests use nothing newer than the first and nothing the second
/// removed.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.25.0", "1.37.0"];
/// Machine-wide, like the kernel matrix's cache: the same for every
/// checkout, and it survives `cargo clean`.
const CACHE: &str = "/var/cache/tcpretrans-deploy";
const MANIFESTS: [&str; 2] = [DAEMONSET, "deploy/kubernetes/service.yaml"];
const DAEMONSET: &str = "deploy/kubernetes/daemonset.yaml";
const CONTAINERFILE: &str = "deploy/Containerfile";

pub fn validate(root: &Path) -> Result<()> {
    let venv = validator()?;
    let manifests: Vec<PathBuf> = MANIFESTS.iter().map(|m| root.join(m)).collect();
    for version in KUBERNETES_VERSIONS {
        let output = Command::new(venv.join("bin/kubernetes-validate"))
            .args(["--strict", "--quiet", "--kubernetes-version", version])
            .args(&manifests)
            .output()
            .context("running kubernetes-validate")?;
        if !output.status.success() {
            bail!(
                "deploy/kubernetes does not validate against Kubernetes {version}:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    let container = tracer_container(&read_daemonset(&venv, root)?)?;
    let args = strings(&container["args"]).context("the DaemonSet's container args")?;
    let binary = crate::release_binary(root)?;
    accepted(&binary, &args, "the DaemonSet's container args")?;
    accepted(&binary, &image_cmd(root)?, "the image's CMD")?;
    metrics_port_named(&container, &args)?;
    eprintln!(
        "xtask: deploy/kubernetes validates against Kubernetes {} (strict), and tcpretrans \
         accepts the arguments it and the image pass",
        KUBERNETES_VERSIONS.join(" and ")
    );
    Ok(())
}

/// The DaemonSet of deploy/kubernetes/daemonset.yaml, as JSON: what the
/// kernel lab's container test runs the image as.
pub fn daemonset(root: &Path) -> Result<Value> {
    read_daemonset(&validator()?, root)
}

/// The pinned validator in a virtual environment of its own, installed when
/// missing; the environment's directory.
fn validator() -> Result<PathBuf> {
    let venv = Path::new(CACHE).join(format!("kubernetes-validate-{VALIDATOR_VERSION}"));
    let installed = Command::new(venv.join("bin/kubernetes-validate"))
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == VALIDATOR_VERSION
        });
    if installed {
        return Ok(venv);
    }
    setup::deploy_check_packages()?;
    eprintln!(
        "xtask: installing kubernetes-validate {VALIDATOR_VERSION} into {}",
        venv.display()
    );
    fs::create_dir_all(CACHE).with_context(|| format!("creating {CACHE}"))?;
    // Debian's python, which python3-venv is for (not whichever is first
    // on PATH).
    setup::run_checked(
        Command::new("/usr/bin/python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
    )?;
    setup::run_checked(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("kubernetes-validate=={VALIDATOR_VERSION}")),
    )?;
    Ok(venv)
}

/// The DaemonSet, read with the YAML parser the validator brings (PyYAML).
fn read_daemonset(venv: &Path, root: &Path) -> Result<Value> {
    const TO_JSON: &str = "import json, sys, yaml\n\
        json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) \
        if d and d.get('kind') == 'DaemonSet'], sys.stdout)";
    let output = Command::new(venv.join("bin/python"))
        .args(["-c", TO_JSON])
        .arg(root.join(DAEMONSET))
        .output()
        .context("running python")?;
    if !output.status.success() {
        bail!(
            "reading {DAEMONSET}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let documents: Vec<Value> =
        serde_json::from_slice(&output.stdout).context("the DaemonSet as JSON")?;
    match <[Value; 1]>::try_from(documents) {
        Ok([daemonset]) => Ok(daemonset),
        Err(documents) => bail!("{DAEMONSET} holds {} DaemonSets, not one", documents.len()),
    }
}

/// The DaemonSet's one container, the tracer's.
fn tracer_container(daemonset: &Value) -> Result<Value> {
    match daemonset["spec"]["template"]["spec"]["containers"].as_array() {
        Some(containers) if containers.len() == 1 => Ok(containers[0].clone()),
        _ => bail!("{DAEMONSET}: the DaemonSet must have exactly one container"),
    }
}

fn strings(value: &Value) -> Result<Vec<String>> {
    value
        .as_array()
        .context("not a list")?
        .iter()
        .map(|v| v.as_str().map(str::to_owned).context("not a string"))
        .collect()
}

/// The image's default arguments: the JSON list of the Containerfile's CMD.
fn image_cmd(root: &Path) -> Result<Vec<String>> {
    let text = fs::read_to_string(root.join(CONTAINERFILE))
        .with_context(|| format!("reading {CONTAINERFILE}"))?;
    let cmd = text
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .with_context(|| format!("{CONTAINERFILE} has no CMD"))?;
    strings(&serde_json::from_str(cmd).with_context(|| format!("{CONTAINERFILE}: CMD {cmd}"))?)
}

/// Whether tcpretrans takes `args`, asked of its own parser: given them
/// with `--help` last, it checks each flag's name and value as it reads
/// them and then prints its help, without tracing. (How flags combine is
/// checked after `--help` would have stopped it: not here.)
fn accepted(binary: &Path, args: &[String], what: &str) -> Result<()> {
    let output = Command::new(binary)
        .args(args)
        .arg("--help")
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    if !output.status.success() {
        bail!(
            "tcpretrans refuses {what} {args:?}:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The port `--metrics` listens on is the container port named `metrics`,
/// which the probes and the Service use.
fn metrics_port_named(container: &Value, args: &[String]) -> Result<()> {
    let address = args
        .iter()
        .position(|a| a == "--metrics")
        .and_then(|at| args.get(at + 1))
        .context("the DaemonSet's container args have no `--metrics ADDRESS`")?;
    let port: u64 = address
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .with_context(|| format!("--metrics {address}: no port"))?;
    let named = container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "metrics")
        .context("the DaemonSet's container has no port named `metrics`")?;
    if named["containerPort"] != port {
        bail!(
            "--metrics listens on {port}, but the container port named `metrics` is {}",
            named["containerPort"]
        );
    }
    Ok(())
}
