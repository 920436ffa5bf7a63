//! The Kubernetes manifests of `deploy/kubernetes/` (docs/deployment.md#kubernetes): the core
//! objects match the Kubernetes API's schemas (kubernetes-validate, strict), KEDA's objects match
//! the schemas made from KEDA's CRDs (`tests/fixtures/deploy/keda/`), `kustomization.yaml`
//! applies every file, and each Deployment has its probes on the listener, resources, a locked
//! down securityContext, a PodDisruptionBudget, and each worker type a ScaledObject on the
//! length of its own queue.
#![allow(clippy::unwrap_used)]

use std::{collections::BTreeMap, sync::OnceLock};

use chorus_shared::topology;
use chorus_tests::{
    deploy::{check_env, listen_port, run, shutdown_grace_secs, tools, yaml_documents, SERVICES},
    repo_dir,
};
use serde_json::Value;

const DIR: &str = "deploy/kubernetes";

/// Every YAML file of `deploy/kubernetes/` but the kustomization, with its documents (read
/// once per test process).
fn manifests() -> &'static BTreeMap<String, Vec<Value>> {
    static FILES: OnceLock<BTreeMap<String, Vec<Value>>> = OnceLock::new();
    FILES.get_or_init(|| {
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(repo_dir().join(DIR)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".yaml") && name != "kustomization.yaml" {
                let documents = yaml_documents(&format!("{DIR}/{name}"));
                files.insert(name, documents);
            }
        }
        files
    })
}

fn is_keda(object: &Value) -> bool {
    object["apiVersion"]
        .as_str()
        .unwrap()
        .starts_with("keda.sh/")
}

/// All objects of the manifests of one `kind`.
fn objects(files: &'static BTreeMap<String, Vec<Value>>, kind: &str) -> Vec<&'static Value> {
    files
        .values()
        .flatten()
        .filter(|o| o["kind"] == kind)
        .collect()
}

#[test]
fn kubernetes_objects_match_the_api_schemas() {
    let files = manifests();
    let core: Vec<String> = files
        .iter()
        .filter(|(_, documents)| !documents.iter().any(is_keda))
        .map(|(name, _)| format!("{DIR}/{name}"))
        .collect();
    assert!(core.len() >= 4, "{core:?}");
    let mut args = vec!["--strict"];
    args.extend(core.iter().map(String::as_str));
    let (ok, output) = run(&tools().join("kubernetes-validate"), &args);
    // It passes an object it has no schema for with a warning: none may be left unchecked.
    let unchecked: Vec<&str> = output.lines().filter(|l| !l.starts_with("INFO ")).collect();
    assert!(ok && unchecked.is_empty(), "kubernetes-validate:\n{output}");
}

#[test]
fn keda_objects_match_the_schemas_of_keda_crds() {
    let files = manifests();
    let mut checked = 0;
    for (name, documents) in files {
        if !documents.iter().any(is_keda) {
            continue;
        }
        // check-jsonschema takes one document per file: KEDA's objects stand alone.
        assert_eq!(documents.len(), 1, "{name}: one KEDA object per file");
        let kind = documents[0]["kind"].as_str().unwrap().to_lowercase();
        let schema = repo_dir().join(format!("tests/fixtures/deploy/keda/{kind}.schema.json"));
        assert!(schema.exists(), "{name}: no schema for {kind}");
        let file = format!("{DIR}/{name}");
        let (ok, output) = run(
            &tools().join("check-jsonschema"),
            &["--schemafile", schema.to_str().unwrap(), &file],
        );
        assert!(ok, "{name}:\n{output}");
        checked += 1;
    }
    assert!(checked >= 2, "a ScaledObject and its TriggerAuthentication");
}

#[test]
fn kustomization_applies_every_manifest() {
    let kustomization = yaml_documents(&format!("{DIR}/kustomization.yaml")).remove(0);
    let mut listed: Vec<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    listed.sort_unstable();
    let files = manifests();
    let want: Vec<&str> = files
        .keys()
        .map(String::as_str)
        .filter(|name| !name.ends_with(".example.yaml"))
        .collect();
    assert_eq!(listed, want);
}

/// The one container of a Deployment's pods.
fn container(deployment: &Value) -> &Value {
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 1, "{}", deployment["metadata"]["name"]);
    &containers[0]
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
}

/// The probes hit `/healthz` and `/readyz` on the port the listener is given.
fn check_probes(name: &str, container: &Value, default_port: u16) {
    let listen = env(container, "CHORUS_HTTP_LISTEN").unwrap();
    assert_eq!(listen_port(listen), ("0.0.0.0", default_port), "{name}");
    let port = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["containerPort"] == default_port)
        .unwrap_or_else(|| panic!("{name}: no containerPort {default_port}"));
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{name}: {probe}");
        assert!(
            get["port"] == port["name"] || get["port"] == default_port,
            "{name}: {probe}"
        );
    }
}

fn check_security(name: &str, deployment: &Value, container: &Value) {
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
    assert!(
        pod["securityContext"]["runAsUser"].as_u64().unwrap() > 0,
        "{name}"
    );
    let context = &container["securityContext"];
    assert_eq!(context["readOnlyRootFilesystem"], true, "{name}");
    assert_eq!(context["allowPrivilegeEscalation"], false, "{name}");
    assert_eq!(
        context["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "{name}"
    );
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > shutdown_grace_secs(),
        "{name}: terminationGracePeriodSeconds {grace}"
    );
    let resources = &container["resources"];
    for path in ["/requests/cpu", "/requests/memory", "/limits/memory"] {
        assert!(resources.pointer(path).is_some(), "{name}: resources{path}");
    }
}

/// The URL files the ConfigMap names are in a mounted Secret, the one KEDA reads too.
fn check_secrets(name: &str, deployment: &Value, container: &Value, config: &Value, secret: &str) {
    let volumes = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    let volume = volumes
        .iter()
        .find(|v| v["secret"]["secretName"] == secret)
        .unwrap_or_else(|| panic!("{name}: no volume of the Secret {secret}"));
    let mounts = container["volumeMounts"].as_array().unwrap();
    let mount = mounts.iter().find(|m| m["name"] == volume["name"]).unwrap();
    let dir = mount["mountPath"].as_str().unwrap();
    for key in ["CHORUS_AMQP_URL_FILE", "CHORUS_REDIS_URL_FILE"] {
        let file = config["data"][key].as_str().unwrap();
        assert!(
            file.starts_with(&format!("{dir}/")),
            "{name}: {key} {file} outside {dir}"
        );
    }
    let from = &container["envFrom"][0]["configMapRef"]["name"];
    assert_eq!(from, &config["metadata"]["name"], "{name}: envFrom");
}

#[test]
fn deployments_have_probes_resources_a_sandbox_and_a_disruption_budget() {
    let files = manifests();
    let configs = objects(files, "ConfigMap");
    let config = configs
        .iter()
        .find(|c| c["data"]["CHORUS_AMQP_URL_FILE"].is_string())
        .unwrap();
    let auth = objects(files, "TriggerAuthentication").remove(0);
    let secret = auth["spec"]["secretTargetRef"][0]["name"].as_str().unwrap();
    let budgets = objects(files, "PodDisruptionBudget");
    let mut programs = Vec::new();
    for deployment in objects(files, "Deployment") {
        let name = deployment["metadata"]["name"].as_str().unwrap();
        let container = container(deployment);
        let program = container["args"][0].as_str().unwrap();
        let (_, port) = SERVICES.iter().find(|(p, _)| *p == program).unwrap();
        check_probes(name, container, *port);
        check_security(name, deployment, container);
        check_secrets(name, deployment, container, config, secret);
        let config_names = config["data"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str);
        check_env(name, program, config_names);
        let vars = container["env"].as_array().unwrap();
        check_env(
            name,
            program,
            vars.iter().map(|e| e["name"].as_str().unwrap()),
        );
        let selector = &deployment["spec"]["selector"]["matchLabels"];
        assert!(
            budgets
                .iter()
                .any(|b| &b["spec"]["selector"]["matchLabels"] == selector),
            "{name}: no PodDisruptionBudget"
        );
        programs.push(program);
    }
    programs.sort_unstable();
    programs.dedup();
    assert_eq!(
        programs,
        ["chorus-orchestrator", "chorus-synthesizer", "chorus-worker"]
    );
}

#[test]
fn each_worker_type_scales_on_the_length_of_its_queue() {
    let files = manifests();
    let scaled = objects(files, "ScaledObject");
    let auths = objects(files, "TriggerAuthentication");
    let mut workers = 0;
    for deployment in objects(files, "Deployment") {
        let container = container(deployment);
        if container["args"][0] != "chorus-worker" {
            continue;
        }
        workers += 1;
        let name = deployment["metadata"]["name"].as_str().unwrap();
        // One type per Deployment, so that its replicas follow its queue alone.
        let types = env(container, "CHORUS_TYPES").unwrap();
        assert!(
            !types.contains(','),
            "{name}: one worker type per Deployment, not {types}"
        );
        let worker_type = types.split(':').next().unwrap();
        let object = scaled
            .iter()
            .find(|s| s["spec"]["scaleTargetRef"]["name"] == name)
            .unwrap_or_else(|| panic!("{name}: no ScaledObject"));
        assert_eq!(
            deployment["spec"].get("replicas"),
            None,
            "{name}: KEDA sets the replicas"
        );
        let triggers = object["spec"]["triggers"].as_array().unwrap();
        assert_eq!(triggers.len(), 1, "{name}");
        let trigger = &triggers[0];
        assert_eq!(trigger["type"], "rabbitmq", "{name}");
        assert_eq!(trigger["metadata"]["mode"], "QueueLength", "{name}");
        let queue = topology::subtask_queue(worker_type);
        assert_eq!(trigger["metadata"]["queueName"], queue.as_str(), "{name}");
        let value: u32 = trigger["metadata"]["value"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(value > 0, "{name}");
        let auth = &trigger["authenticationRef"]["name"];
        assert!(
            auths.iter().any(|a| &a["metadata"]["name"] == auth),
            "{name}: {auth}"
        );
    }
    assert!(workers >= 1);
    assert_eq!(
        scaled.len(),
        workers,
        "a ScaledObject per worker Deployment"
    );
}
