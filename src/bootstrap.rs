//! The methods a Codex client calls around the thread lifecycle (the Codex TUI calls them at
//! start-up and some are fatal to it when they fail): `account/read`, `model/list`,
//! `config/read`, `configRequirements/read`, `thread/turns/list`, and the catalogue methods
//! threadhost has nothing for (`hooks/list`, `skills/list`, `plugin/installed`,
//! `collaborationMode/list`, `thread/backgroundTerminals/list`,
//! `account/bedrock/checkGovCloudRequirements`).
//!
//! Every answer says what threadhost actually is: the models are the agent factory's, the
//! configuration is the one `serve` runs with, no account is needed, and the catalogues are
//! empty because threadhost has no hooks, skills, plugins or background terminals.

use serde_json::{json, Value};
use threadhost_actors::{ConnectionHandle, ThreadHost, ThreadId, ThreadItem};

use crate::rpc::ServerInfo;
use crate::wire::{host_error, Params, RpcError};

/// The methods this module answers.
pub const METHODS: [&str; 11] = [
    "account/read",
    "model/list",
    "config/read",
    "configRequirements/read",
    "thread/turns/list",
    "hooks/list",
    "skills/list",
    "plugin/installed",
    "collaborationMode/list",
    "thread/backgroundTerminals/list",
    "account/bedrock/checkGovCloudRequirements",
];

/// The only approval policy threadhost's agents follow: they ask before running a command.
const APPROVAL_POLICY: &str = "on-request";
/// threadhost's agents run no commands for real, so nothing can write: read-only.
const SANDBOX_MODE: &str = "read-only";

/// Answers one of [`METHODS`].
pub async fn call(
    method: &str,
    params: &Params,
    host: &ThreadHost,
    conn: &ConnectionHandle,
    info: &ServerInfo,
) -> Result<Value, RpcError> {
    Ok(match method {
        "account/read" => json!({ "account": null, "requiresOpenaiAuth": false }),
        "model/list" => model_list(host),
        "config/read" => config_read(host, info, params)?,
        "configRequirements/read" => json!({
            "requirements": {
                "allowedApprovalPolicies": [APPROVAL_POLICY],
                "allowedSandboxModes": [SANDBOX_MODE],
            }
        }),
        "thread/turns/list" => turns_list(conn, params).await?,
        "hooks/list" => per_cwd(
            params,
            |cwd| json!({ "cwd": cwd, "hooks": [], "errors": [], "warnings": [] }),
        )?,
        "skills/list" => per_cwd(
            params,
            |cwd| json!({ "cwd": cwd, "skills": [], "errors": [] }),
        )?,
        "plugin/installed" => json!({ "marketplaces": [], "marketplaceLoadErrors": [] }),
        "collaborationMode/list" => json!({ "data": [] }),
        "thread/backgroundTerminals/list" => {
            // The thread must exist; threadhost's agents never leave terminals running.
            let id = ThreadId::from(params.required::<String>("threadId")?);
            conn.read(&id, false).await.map_err(|e| host_error(&e))?;
            json!({ "data": [], "nextCursor": null })
        }
        "account/bedrock/checkGovCloudRequirements" => {
            json!({ "isGovCloud": false, "shouldWarn": false })
        }
        other => {
            return Err(RpcError::new(
                crate::wire::METHOD_NOT_FOUND,
                format!("method not found: {other}"),
            ))
        }
    })
}

/// `model/list`: the agent factory's models, in one page.
fn model_list(host: &ThreadHost) -> Value {
    let data: Vec<Value> = host
        .models()
        .into_iter()
        .map(|m| {
            json!({
                "id": m.id,
                "model": m.id,
                "displayName": m.display_name,
                "description": m.description,
                "hidden": false,
                "isDefault": m.is_default,
                "defaultReasoningEffort": "low",
                "supportedReasoningEfforts": [{
                    "reasoningEffort": "low",
                    "description": "threadhost's agents do not reason; the effort changes nothing",
                }],
                "inputModalities": ["text"],
                "upgrade": null,
                "upgradeInfo": null,
                "availabilityNux": null,
            })
        })
        .collect();
    json!({ "data": data, "nextCursor": null })
}

/// `config/read`: the configuration `serve` runs with, as one session layer (the command line
/// and its defaults); threadhost's own settings are under `threadhost`.
fn config_read(host: &ThreadHost, info: &ServerInfo, params: &Params) -> Result<Value, RpcError> {
    let include_layers = params.optional::<bool>("includeLayers")?.unwrap_or(false);
    let cfg = host.config();
    let model = host
        .models()
        .into_iter()
        .find(|m| m.is_default)
        .map(|m| m.id);
    let config = json!({
        "model": model,
        "model_provider": "threadhost",
        "approval_policy": APPROVAL_POLICY,
        "sandbox_mode": SANDBOX_MODE,
        "threadhost": {
            "data_dir": info.codex_home,
            "transport": info.transport,
            "auth": info.auth,
            "unload_delay_ms": millis(cfg.unload_delay),
            "shutdown_timeout_ms": millis(cfg.shutdown_timeout),
            "arbiters": cfg.arbiters,
            "outbound_capacity": cfg.outbound_capacity,
            "max_restarts": cfg.max_restarts,
            "restart_period_ms": millis(cfg.restart_period),
        },
    });
    let layer = json!({ "type": "sessionFlags" });
    let version = env!("CARGO_PKG_VERSION");
    let origins: serde_json::Map<String, Value> = config
        .as_object()
        .into_iter()
        .flat_map(|o| o.keys())
        .map(|k| (k.clone(), json!({ "name": layer, "version": version })))
        .collect();
    let layers = include_layers.then(
        || json!([{ "name": layer, "version": version, "config": config, "disabledReason": null }]),
    );
    Ok(json!({ "config": config, "origins": origins, "layers": layers }))
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One empty entry per requested `cwds` path (Codex's shape for hooks and skills).
fn per_cwd(params: &Params, entry: impl Fn(&str) -> Value) -> Result<Value, RpcError> {
    let cwds = params.optional::<Vec<String>>("cwds")?.unwrap_or_default();
    Ok(json!({ "data": cwds.iter().map(|c| entry(c)).collect::<Vec<_>>() }))
}

/// `thread/turns/list`: a page of a thread's turns (stored, with the running one merged),
/// newest first by default. The cursor is the id of the last turn of the previous page.
async fn turns_list(conn: &ConnectionHandle, params: &Params) -> Result<Value, RpcError> {
    let id = ThreadId::from(params.required::<String>("threadId")?);
    let ascending = params.sort_ascending()?;
    let view = params
        .optional::<String>("itemsView")?
        .unwrap_or_else(|| "summary".into());
    if !matches!(view.as_str(), "full" | "summary" | "notLoaded") {
        return Err(RpcError::invalid_params(format!(
            "invalid params: field `itemsView`: unknown view `{view}`; use full, summary or notLoaded"
        )));
    }
    let limit = params
        .optional::<u32>("limit")?
        .map_or(usize::MAX, |l| (l as usize).max(1));
    let cursor = params.optional::<String>("cursor")?;
    let snapshot = conn.read(&id, true).await.map_err(|e| host_error(&e))?;
    let mut turns = snapshot.turns;
    if !ascending {
        turns.reverse();
    }
    let start = match &cursor {
        None => 0,
        Some(c) => match turns.iter().position(|t| &t.id == c) {
            Some(i) => i + 1,
            None => {
                return Err(RpcError::invalid_params(format!(
                    "invalid params: field `cursor`: no turn {c:?} in thread {id}; pass the \
                     nextCursor of a previous page, or no cursor to start over"
                )))
            }
        },
    };
    let page: Vec<_> = turns.iter().skip(start).take(limit).collect();
    let next = (start + page.len() < turns.len())
        .then(|| page.last().map(|t| t.id.clone()))
        .flatten();
    // Reversing the direction from the turn after this page's first one includes that first
    // turn again (the anchor), as Codex's `backwardsCursor` promises.
    let backwards = (!page.is_empty())
        .then(|| turns.get(start + 1).map(|t| t.id.clone()))
        .flatten();
    let data: Vec<Value> = page
        .into_iter()
        .map(|t| {
            let mut t = t.clone();
            match view.as_str() {
                "notLoaded" => t.items.clear(),
                "summary" => t.items.retain(|i| {
                    matches!(
                        i,
                        ThreadItem::UserMessage { .. } | ThreadItem::AgentMessage { .. }
                    )
                }),
                _ => {}
            }
            let mut v = serde_json::to_value(&t).unwrap_or(Value::Null);
            v["itemsView"] = json!(view);
            v
        })
        .collect();
    Ok(json!({ "data": data, "nextCursor": next, "backwardsCursor": backwards }))
}
