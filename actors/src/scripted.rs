//! The scripted agent: deterministic, no I/O, driven by the first text input of a turn, so
//! every path of the lifecycle can be walked from a test or a client.
//!
//! | input | what the turn does |
//! |---|---|
//! | plain text | streams the text back as an agent message, one delta per word; reports token usage; completes |
//! | `/sleep MS` | stays in progress MS milliseconds, then completes |
//! | `/approve COMMAND` | asks for a command approval; `accept` completes the command item, `decline` declines it; completes |
//! | `/ask QUESTION` | asks the user; the answer comes back as the agent message; completes |
//! | `/fail` | fails with a model error (`error` notification, status `systemError`) |
//! | `/panic` | panics inside the turn (the thread restarts) |
//! | `/panic-now` | panics while the turn is being started (a panic inside the actor's handler) |
//! | `/hang-shutdown` | from now on this thread's shutdown never completes |
//! | `/refuse-shutdown` | from now on this thread's shutdown cannot be submitted |
//! | `/background MS` | completes at once but keeps background work running for MS milliseconds |

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use tokio::time::Instant;

use crate::agent::{Agent, AgentFactory, LocalBoxFuture, ModelInfo, TurnContext, TurnInput};
use crate::error::AgentError;
use crate::ids::ThreadId;
use crate::model::{
    unix_millis, CommandExecutionStatus, ThreadItem, TokenUsageBreakdown, TurnError, UserInput,
};
use crate::thread::{APPROVAL_METHOD, USER_INPUT_METHOD};

/// The model id of the scripted agent.
pub const SCRIPTED_MODEL: &str = "threadhost-scripted";

/// How a scripted agent's shutdown behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShutdownBehavior {
    /// Completes at once.
    #[default]
    Complete,
    /// Cannot be submitted (the "submit failed" outcome).
    Refuse,
    /// Never completes (the "timed out" outcome).
    Hang,
    /// Completes after this long (to test what happens while a teardown is in flight).
    Slow(Duration),
}

/// Makes scripted agents.
#[derive(Debug, Default)]
pub struct ScriptedAgentFactory {
    /// How agents created from now on shut down.
    shutdown: std::sync::Mutex<ShutdownBehavior>,
}

impl ScriptedAgentFactory {
    /// A factory whose agents shut down as told; change it any time with
    /// [`ScriptedAgentFactory::set_shutdown`] (agents created later follow).
    pub fn new(shutdown: ShutdownBehavior) -> Self {
        let f = Self::default();
        f.set_shutdown(shutdown);
        f
    }

    /// Sets how agents created from now on shut down.
    pub fn set_shutdown(&self, b: ShutdownBehavior) {
        *self
            .shutdown
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = b;
    }
}

impl AgentFactory for ScriptedAgentFactory {
    fn models(&self) -> Vec<ModelInfo> {
        vec![ModelInfo {
            id: SCRIPTED_MODEL.to_owned(),
            display_name: "threadhost scripted agent".to_owned(),
            description: "Deterministic built-in agent: echoes text; /sleep, /approve, /ask, /fail, /panic, /hang-shutdown walk the lifecycle".to_owned(),
            is_default: true,
        }]
    }

    fn create(&self, _thread_id: &ThreadId, model: &str) -> Result<Box<dyn Agent>, AgentError> {
        if model != SCRIPTED_MODEL {
            return Err(AgentError::Refused(format!("unknown model {model:?}")));
        }
        let b = *self
            .shutdown
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(Box::new(ScriptedAgent::new(b)))
    }
}

/// The scripted agent of one thread.
#[derive(Debug)]
pub struct ScriptedAgent {
    shutdown: Rc<Cell<ShutdownBehavior>>,
    background_until: Rc<Cell<Option<Instant>>>,
}

impl ScriptedAgent {
    /// An agent that shuts down as told.
    pub fn new(shutdown: ShutdownBehavior) -> Self {
        Self {
            shutdown: Rc::new(Cell::new(shutdown)),
            background_until: Rc::new(Cell::new(None)),
        }
    }
}

fn first_text(input: &[UserInput]) -> String {
    input
        .iter()
        .find_map(|i| match i {
            UserInput::Text { text, .. } => Some(text.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn parse_ms(arg: &str) -> Result<Duration, TurnError> {
    arg.trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| {
            TurnError::new(format!(
                "expected a number of milliseconds after the command, got {arg:?}"
            ))
        })
}

fn words(s: &str) -> i64 {
    i64::try_from(s.split_whitespace().count()).unwrap_or(i64::MAX)
}

/// Streams `text` as one agent-message item, a delta per word, yielding between deltas as a
/// real model stream would (so readers interleave with the stream).
async fn say(ctx: &TurnContext, text: &str) {
    let id = format!("{}-msg", ctx.turn_id());
    ctx.raw_response_item(serde_json::json!({
        "type": "message",
        "role": "assistant",
        "content": [{ "type": "output_text", "text": text }],
    }));
    ctx.item_started(ThreadItem::AgentMessage {
        id: id.clone(),
        text: String::new(),
    });
    let mut first = true;
    for w in text.split_whitespace() {
        let delta = if first { w.to_owned() } else { format!(" {w}") };
        first = false;
        ctx.agent_message_delta(&id, delta);
        tokio::task::yield_now().await;
    }
    ctx.item_completed(ThreadItem::AgentMessage {
        id,
        text: text.to_owned(),
    });
}

fn usage(ctx: &TurnContext, input: &str, output: &str) {
    let (i, o) = (words(input), words(output));
    ctx.token_usage(
        TokenUsageBreakdown {
            total_tokens: i + o,
            input_tokens: i,
            cached_input_tokens: 0,
            output_tokens: o,
            reasoning_output_tokens: 0,
        },
        Some(128_000),
    );
}

fn accepted(answer: &serde_json::Value) -> bool {
    match answer.get("decision") {
        Some(serde_json::Value::String(s)) => s == "accept" || s == "acceptForSession",
        Some(serde_json::Value::Object(o)) => o.keys().any(|k| k.starts_with("accept")),
        _ => false,
    }
}

fn answer_text(answer: &serde_json::Value) -> String {
    let Some(answers) = answer.get("answers").and_then(|a| a.as_object()) else {
        return String::new();
    };
    answers
        .values()
        .filter_map(|a| a.get("answers").and_then(|x| x.as_array()))
        .flatten()
        .filter_map(|s| s.as_str())
        // The Codex TUI sends a free-text answer as `user_note: <text>`.
        .map(|s| s.strip_prefix("user_note: ").unwrap_or(s))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Agent for ScriptedAgent {
    fn run_turn(
        &mut self,
        input: TurnInput,
        ctx: TurnContext,
    ) -> LocalBoxFuture<'static, Result<(), TurnError>> {
        let text = first_text(&input.input);
        let (cmd, arg) = match text.strip_prefix('/') {
            Some(rest) => {
                let mut parts = rest.splitn(2, char::is_whitespace);
                (
                    parts.next().unwrap_or_default().to_owned(),
                    parts.next().unwrap_or_default().trim().to_owned(),
                )
            }
            None => (String::new(), text.clone()),
        };
        match cmd.as_str() {
            "panic-now" => panic!("scripted agent: /panic-now"),
            "hang-shutdown" => self.shutdown.set(ShutdownBehavior::Hang),
            "refuse-shutdown" => self.shutdown.set(ShutdownBehavior::Refuse),
            _ => {}
        }
        let background = Rc::clone(&self.background_until);
        let cwd = input.cwd;
        Box::pin(async move {
            match cmd.as_str() {
                "" => {
                    say(&ctx, &text).await;
                    usage(&ctx, &text, &text);
                }
                "sleep" => {
                    let d = parse_ms(&arg)?;
                    tokio::time::sleep(d).await;
                    let msg = format!("slept {} ms", d.as_millis());
                    say(&ctx, &msg).await;
                    usage(&ctx, &text, &msg);
                }
                "background" => {
                    let d = parse_ms(&arg)?;
                    background.set(Some(Instant::now() + d));
                    say(
                        &ctx,
                        &format!("background work runs for {} ms", d.as_millis()),
                    )
                    .await;
                }
                "approve" => {
                    let item_id = format!("{}-cmd", ctx.turn_id());
                    let item = |status, out: Option<String>, code| ThreadItem::CommandExecution {
                        id: item_id.clone(),
                        command: arg.clone(),
                        cwd: cwd.clone(),
                        status,
                        command_actions: Vec::new(),
                        aggregated_output: out,
                        exit_code: code,
                        duration_ms: code.map(|_| 0),
                    };
                    ctx.item_started(item(CommandExecutionStatus::InProgress, None, None));
                    let params = serde_json::json!({
                        "threadId": input.thread_id,
                        "turnId": ctx.turn_id(),
                        "itemId": item_id,
                        "startedAtMs": unix_millis(),
                        "command": arg,
                        "cwd": cwd,
                        "reason": "the scripted agent asks before it runs a command",
                        "commandActions": [],
                    });
                    let answer = ctx
                        .request(APPROVAL_METHOD, params)
                        .await
                        .map_err(|e| TurnError::new(e.to_string()))?;
                    let msg = if accepted(&answer) {
                        let out = format!(
                            "(scripted) {arg}: approved; threadhost runs no real commands\n"
                        );
                        ctx.item_completed(item(
                            CommandExecutionStatus::Completed,
                            Some(out),
                            Some(0),
                        ));
                        format!("approved: {arg}")
                    } else {
                        ctx.item_completed(item(CommandExecutionStatus::Declined, None, None));
                        format!("declined: {arg}")
                    };
                    say(&ctx, &msg).await;
                    usage(&ctx, &text, &msg);
                }
                "ask" => {
                    let params = serde_json::json!({
                        "threadId": input.thread_id,
                        "turnId": ctx.turn_id(),
                        "itemId": format!("{}-ask", ctx.turn_id()),
                        "isBlocking": true,
                        "questions": [{
                            "id": "answer",
                            "header": "Question",
                            "question": arg,
                            "isOther": true,
                            "isSecret": false,
                            "options": null,
                        }],
                    });
                    let answer = ctx
                        .request(USER_INPUT_METHOD, params)
                        .await
                        .map_err(|e| TurnError::new(e.to_string()))?;
                    let msg = answer_text(&answer);
                    let msg = if msg.is_empty() {
                        "(no answer)".to_owned()
                    } else {
                        msg
                    };
                    say(&ctx, &msg).await;
                    usage(&ctx, &text, &msg);
                }
                "fail" => {
                    return Err(TurnError::new(
                        "scripted model error: the model failed this turn (/fail)",
                    ))
                }
                "panic" => panic!("scripted agent: /panic"),
                "hang-shutdown" => say(&ctx, "shutdown of this thread will now hang").await,
                "refuse-shutdown" => say(&ctx, "shutdown of this thread will now be refused").await,
                other => {
                    let msg = format!("unknown command /{other}; try /sleep, /approve, /ask, /fail, /panic, /hang-shutdown");
                    say(&ctx, &msg).await;
                }
            }
            Ok(())
        })
    }

    fn has_running_work(&self) -> bool {
        self.background_until
            .get()
            .is_some_and(|t| Instant::now() < t)
    }

    fn shutdown(&mut self) -> Result<LocalBoxFuture<'static, ()>, AgentError> {
        match self.shutdown.get() {
            ShutdownBehavior::Complete => Ok(Box::pin(async {})),
            ShutdownBehavior::Refuse => Err(AgentError::Refused(
                "scripted agent refuses to shut down".into(),
            )),
            ShutdownBehavior::Hang => Ok(Box::pin(std::future::pending())),
            ShutdownBehavior::Slow(d) => Ok(Box::pin(tokio::time::sleep(d))),
        }
    }
}
