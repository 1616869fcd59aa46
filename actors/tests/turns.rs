//! Actor-level tests of spec sections 8 to 10: server requests, resume, goals, and turns stored
//! before they are reported complete.

use std::time::Duration;

use threadhost_actors::testkit::{advance, settle, test_host, Probe};
use threadhost_actors::*;

const DELAY: Duration = Duration::from_secs(60);
const TICK: Duration = Duration::from_millis(2);

async fn pending_approval(
    p: &mut Probe,
    id: &ThreadId,
    cmd: &str,
) -> std::sync::Arc<ServerRequest> {
    p.turn(id, &format!("/approve {cmd}")).await;
    match p.until(APPROVAL_METHOD).await {
        Outbound::Request(r) => r,
        other => panic!("{other:?}"),
    }
}

// ---- section 8: server requests ---------------------------------------------------------------

#[actix::test]
async fn server_request_ids_come_from_one_counter_per_host() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let t1 = a.start_thread().await;
    let r1 = pending_approval(&mut a, &t1, "one").await;
    a.drain().await;
    let t2 = a.start_thread().await;
    let r2 = pending_approval(&mut a, &t2, "two").await;
    assert_ne!(r1.id, r2.id);
    assert!(r2.id > r1.id);
    assert_eq!(r1.params["threadId"], serde_json::json!(t1));
    assert_eq!(r2.params["command"], "two");
}

#[actix::test]
async fn the_first_answer_wins_and_later_answers_change_nothing() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let mut b = Probe::connect(&host);
    let id = a.start_thread().await;
    b.handle.resume(&id, true).await.unwrap();
    b.drain().await;
    let req = pending_approval(&mut a, &id, "ls").await;
    assert!(matches!(b.until(APPROVAL_METHOD).await, Outbound::Request(r) if r.id == req.id));
    assert!(
        b.handle
            .answer(req.id, serde_json::json!({"decision": "decline"}))
            .await
    );
    settle().await;
    a.handle
        .answer(req.id, serde_json::json!({"decision": "accept"}))
        .await;
    let msgs = a.drain_messages().await;
    let completed = msgs.iter().find_map(|m| match m {
        Outbound::Notification(n) => match n.as_ref() {
            Notification::ItemCompleted { item, .. } => match item.as_ref() {
                ThreadItem::CommandExecution { status, .. } => Some(*status),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    });
    assert_eq!(
        completed,
        Some(CommandExecutionStatus::Declined),
        "the first answer (decline) won"
    );
    assert!(
        host.metrics().ignored_answers.get() >= 1,
        "the late answer was counted"
    );
    assert!(
        !msgs.iter().any(|m| matches!(m, Outbound::Response { .. })),
        "nothing answers an answer"
    );
}

#[actix::test]
async fn an_answer_from_a_connection_that_never_got_the_request_is_ignored() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let stranger = Probe::connect(&host);
    let id = a.start_thread().await;
    let req = pending_approval(&mut a, &id, "ls").await;
    assert!(
        !stranger
            .handle
            .answer(req.id, serde_json::json!({"decision": "accept"}))
            .await
    );
    assert!(
        !a.handle
            .answer(RequestId(9999), serde_json::json!({}))
            .await,
        "unknown id"
    );
    assert_eq!(host.metrics().ignored_answers.get(), 2);
    let s = a.handle.read(&id, false).await.unwrap();
    assert_eq!(
        s.status,
        ThreadStatus::Active {
            active_flags: vec![ActiveFlag::WaitingOnApproval]
        }
    );
}

#[actix::test]
async fn resolved_follows_the_request_and_the_answer() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    a.turn(&id, "/ask what colour?").await;
    let req = match a.until(USER_INPUT_METHOD).await {
        Outbound::Request(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        a.handle.read(&id, false).await.unwrap().status,
        ThreadStatus::Active {
            active_flags: vec![ActiveFlag::WaitingOnUserInput]
        }
    );
    a.drain().await;
    a.handle
        .answer(
            req.id,
            serde_json::json!({"answers": {"answer": {"answers": ["blue"]}}}),
        )
        .await;
    let n = a.notification().await;
    assert!(
        matches!(n.as_ref(), Notification::ServerRequestResolved { request_id, .. } if *request_id == req.id),
        "{n:?}"
    );
    let msgs = a.drain_messages().await;
    let text = msgs.iter().find_map(|m| match m {
        Outbound::Notification(n) => match n.as_ref() {
            Notification::ItemCompleted { item, .. } => match item.as_ref() {
                ThreadItem::AgentMessage { text, .. } => Some(text.clone()),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    });
    assert_eq!(text.as_deref(), Some("blue"));
}

#[actix::test]
async fn interrupt_ends_the_turn_interrupted_and_resolves_its_requests() {
    tokio::time::pause();
    let (host, store, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    let req = pending_approval(&mut a, &id, "make").await;
    let turn_id = req.params["turnId"].as_str().unwrap().to_owned();
    a.handle.interrupt(&id, &turn_id).await.unwrap();
    let seen = a.drain_messages().await;
    let names: Vec<String> = seen
        .iter()
        .map(threadhost_actors::testkit::describe)
        .collect();
    let resolved = names
        .iter()
        .position(|m| m == "serverRequest/resolved")
        .expect("resolved");
    let completed = names
        .iter()
        .position(|m| m == "turn/completed")
        .expect("completed");
    assert!(resolved < completed, "{names:?}");
    assert_eq!(
        store.load(id.clone()).await.unwrap().unwrap().turns[0].status,
        TurnStatus::Interrupted
    );
    assert_eq!(
        a.handle.read(&id, false).await.unwrap().status,
        ThreadStatus::Idle
    );
    let err = a.handle.interrupt(&id, &turn_id).await.unwrap_err();
    assert!(matches!(err, HostError::NoActiveTurn { .. }), "{err}");
    assert_eq!(host.metrics().pending_requests.get(), 0);
}

#[actix::test]
async fn a_request_raised_with_no_subscribers_is_kept_and_replayed_on_resume() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    a.handle.unsubscribe(&id).await.unwrap();
    a.turn(&id, "/approve deploy").await;
    settle().await;
    a.drain().await;
    a.handle.resume(&id, true).await.unwrap();
    let msgs = a.drain_messages().await;
    let req = msgs.iter().find_map(|m| match m {
        Outbound::Request(r) => Some(r.clone()),
        _ => None,
    });
    let req = req.expect("the pending approval is replayed");
    assert_eq!(req.params["command"], "deploy");
    assert!(
        a.handle
            .answer(req.id, serde_json::json!({"decision": "accept"}))
            .await
    );
    a.until_turn_completed().await;
}

#[actix::test]
async fn pending_requests_are_dropped_without_resolved_on_unload() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    let _req = pending_approval(&mut a, &id, "ls").await;
    a.handle.close_thread(&id).await.unwrap();
    let seen = a.drain().await;
    let resolved_before_close = seen
        .iter()
        .take_while(|m| *m != "thread/closed")
        .filter(|m| *m == "serverRequest/resolved")
        .count();
    // The interrupt of the running turn resolves the request (a turn end); the unload itself
    // sends nothing more for it.
    assert_eq!(resolved_before_close, 1, "{seen:?}");
    assert_eq!(host.metrics().pending_requests.get(), 0);
}

// ---- section 9: resume -------------------------------------------------------------------------

#[actix::test]
async fn a_warm_resume_sends_response_usage_goal_then_requests_in_id_order() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    a.turn(&id, "count these words").await;
    a.until_turn_completed().await;
    a.handle
        .set_goal(
            &id,
            GoalUpdate {
                objective: Some("ship it".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let req = pending_approval(&mut a, &id, "cargo publish").await;
    let mut b = Probe::connect(&host);
    b.handle
        .responding_to(ClientRequestId::Str("r1".into()))
        .resume(&id, false)
        .await
        .unwrap();
    let msgs = b.drain_messages().await;
    assert_eq!(msgs.len(), 4, "{msgs:?}");
    match &msgs[0] {
        Outbound::Response {
            id: ClientRequestId::Str(s),
            result: Ok(v),
        } => {
            assert_eq!(s, "r1");
            assert_eq!(v["thread"]["id"], serde_json::json!(id));
            let turns = v["thread"]["turns"].as_array().unwrap();
            assert_eq!(turns.len(), 2);
            assert_eq!(
                turns[1]["status"], "inProgress",
                "the active turn goes last"
            );
        }
        other => panic!("response first, got {other:?}"),
    }
    assert!(
        matches!(&msgs[1], Outbound::Notification(n) if n.method() == "thread/tokenUsage/updated")
    );
    assert!(
        matches!(&msgs[2], Outbound::Notification(n) if matches!(n.as_ref(), Notification::GoalUpdated { turn_id: None, .. }))
    );
    match &msgs[3] {
        Outbound::Request(r) => {
            assert_eq!(r.id, req.id, "original id");
            assert_eq!(r.params, req.params, "original params");
        }
        other => panic!("{other:?}"),
    }
    // Live events follow: b is now a subscriber and may answer the replayed request.
    assert!(
        b.handle
            .answer(req.id, serde_json::json!({"decision": "accept"}))
            .await
    );
    b.until_turn_completed().await;
}

#[actix::test]
async fn replays_come_in_ascending_id_order() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    let first = pending_approval(&mut a, &id, "one").await;
    let mut b = Probe::connect(&host);
    b.handle.resume(&id, true).await.unwrap();
    b.handle.resume(&id, true).await.unwrap();
    let ids: Vec<RequestId> = b
        .drain_messages()
        .await
        .into_iter()
        .filter_map(|m| match m {
            Outbound::Request(r) => Some(r.id),
            _ => None,
        })
        .collect();
    assert_eq!(
        ids,
        vec![first.id, first.id],
        "each resume replays the pending request once"
    );
}

#[actix::test]
async fn a_resume_excluding_turns_sends_no_usage_and_a_goal_cleared_snapshot() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    a.turn(&id, "some words").await;
    a.until_turn_completed().await;
    let mut b = Probe::connect(&host);
    let s = b
        .handle
        .responding_to(ClientRequestId::Int(1))
        .resume(&id, true)
        .await
        .unwrap();
    assert!(s.turns.is_empty());
    assert_eq!(b.drain().await, vec!["response", "thread/goal/cleared"]);
}

#[actix::test]
async fn a_cold_resume_shows_exactly_the_stored_turns_and_usage() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    for text in ["one two", "three four five"] {
        a.turn(&id, text).await;
        a.until_turn_completed().await;
    }
    let warm = a.handle.read(&id, true).await.unwrap();
    a.drain().await;
    a.handle.unsubscribe(&id).await.unwrap();
    advance(DELAY + TICK).await;
    a.until("thread/closed").await;
    let mut b = Probe::connect(&host);
    let cold = b
        .handle
        .responding_to(ClientRequestId::Int(5))
        .resume(&id, false)
        .await
        .unwrap();
    assert_eq!(cold.turns, warm.turns, "the same turns, items and statuses");
    let msgs = b.drain_messages().await;
    let names: Vec<String> = msgs
        .iter()
        .map(threadhost_actors::testkit::describe)
        .collect();
    assert_eq!(
        names,
        vec![
            "thread/status/changed",
            "response",
            "thread/tokenUsage/updated",
            "thread/goal/cleared"
        ]
    );
    match &msgs[2] {
        Outbound::Notification(n) => match n.as_ref() {
            Notification::TokenUsageUpdated {
                token_usage,
                turn_id,
                ..
            } => {
                assert_eq!(
                    &**turn_id,
                    warm.turns[1].id.as_str(),
                    "usage belongs to the latest turn with usage"
                );
                assert_eq!(token_usage.total.total_tokens, 4 + 6);
                assert_eq!(token_usage.last.total_tokens, 6);
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

#[actix::test]
async fn a_trailing_interrupted_turn_without_usage_does_not_take_the_usage() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    a.turn(&id, "with usage").await;
    a.until_turn_completed().await;
    let t = a.turn(&id, "/sleep 100000").await;
    a.handle.interrupt(&id, &t.id).await.unwrap();
    a.handle.close_thread(&id).await.unwrap();
    let mut b = Probe::connect(&host);
    let s = b.handle.resume(&id, false).await.unwrap();
    assert_eq!(s.turns.len(), 2);
    assert_eq!(s.turns[1].status, TurnStatus::Interrupted);
    let usage_turn = b.drain_messages().await.iter().find_map(|m| match m {
        Outbound::Notification(n) => match n.as_ref() {
            Notification::TokenUsageUpdated { turn_id, .. } => Some(turn_id.clone()),
            _ => None,
        },
        _ => None,
    });
    assert_eq!(usage_turn.as_deref(), Some(s.turns[0].id.as_str()));
}

#[actix::test]
async fn in_progress_turns_are_reported_interrupted_when_the_thread_is_not_active() {
    tokio::time::pause();
    let (host, store, _) = test_host(DELAY);
    let mut meta = ThreadMeta::new(
        ThreadId::from("stale-thread"),
        SCRIPTED_MODEL.into(),
        "/w".into(),
    );
    meta.preview = "stale".into();
    let mut turn = Turn::started("t-stale".into());
    turn.items.push(ThreadItem::UserMessage {
        id: "u".into(),
        content: vec![UserInput::text("stale")],
    });
    store.save_turn(meta, turn, None).await.unwrap();
    let a = Probe::connect(&host);
    let s = a
        .handle
        .resume(&ThreadId::from("stale-thread"), false)
        .await
        .unwrap();
    assert_eq!(s.status, ThreadStatus::Idle);
    assert_eq!(s.turns[0].status, TurnStatus::Interrupted);
}

#[actix::test]
async fn resuming_a_thread_that_never_completed_a_turn_is_no_rollout_found() {
    tokio::time::pause();
    let (host, _, _) = test_host(Duration::ZERO);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    a.handle.unsubscribe(&id).await.unwrap();
    advance(TICK).await;
    a.until("thread/closed").await;
    let err = a
        .handle
        .responding_to(ClientRequestId::Int(3))
        .resume(&id, false)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("no rollout found for thread id {id}")
    );
    match a.recv().await {
        Outbound::Response {
            id: ClientRequestId::Int(3),
            result: Err(e),
        } => assert_eq!(e, err),
        other => panic!("the error is delivered in-stream: {other:?}"),
    }
    assert!(host.loaded_threads().is_empty());
}

// ---- turns are durable before turn/completed --------------------------------------------------

#[actix::test]
async fn a_turn_is_stored_before_turn_completed_is_sent() {
    tokio::time::pause();
    let (host, store, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    a.turn(&id, "durable words").await;
    a.until_turn_completed().await;
    let stored = store
        .load(id)
        .await
        .unwrap()
        .expect("stored when turn/completed arrived");
    assert_eq!(stored.turns.len(), 1);
    assert_eq!(
        stored.turns[0].items.len(),
        2,
        "user message and agent message"
    );
    assert_eq!(stored.usage.map(|u| u.usage.last.total_tokens), Some(4));
    assert_eq!(stored.meta.preview, "durable words");
}

#[actix::test]
async fn a_store_failure_is_reported_and_the_thread_keeps_running() {
    tokio::time::pause();
    let (host, store, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    store.fail_writes(Some("disk full"));
    a.turn(&id, "lost words").await;
    let msgs = a.drain_messages().await;
    let err = msgs.iter().find_map(|m| match m {
        Outbound::Notification(n) => match n.as_ref() {
            Notification::Error { error, .. } => Some(error.message.clone()),
            _ => None,
        },
        _ => None,
    });
    assert!(
        err.as_deref().is_some_and(|e| e.contains("disk full")),
        "{err:?}"
    );
    assert_eq!(host.metrics().store_errors.get(), 1);
    let e = a
        .handle
        .set_goal(
            &id,
            GoalUpdate {
                objective: Some("x".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, HostError::Store(_)), "{e}");
    store.fail_writes(None);
    a.turn(&id, "kept words").await;
    a.until_turn_completed().await;
}

// ---- section 10: goals -------------------------------------------------------------------------

#[actix::test]
async fn a_goal_needs_an_objective_to_be_created() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    let err = a
        .handle
        .set_goal(
            &id,
            GoalUpdate {
                status: Some(GoalStatus::Paused),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("cannot update goal for thread {id}: no goal exists")
    );
    assert_eq!(a.handle.get_goal(&id).await.unwrap(), None);
}

#[actix::test]
async fn setting_a_goal_answers_then_broadcasts_and_clearing_broadcasts_cleared() {
    tokio::time::pause();
    let (host, store, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let mut other = Probe::connect(&host);
    let id = a.start_thread().await;
    other.drain().await;
    let goal = a
        .handle
        .responding_to(ClientRequestId::Int(1))
        .set_goal(
            &id,
            GoalUpdate {
                objective: Some("write docs".into()),
                token_budget: Some(1000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(goal.status, GoalStatus::Active);
    assert_eq!(a.drain().await, vec!["response", "thread/goal/updated"]);
    assert_eq!(
        other.drain().await,
        vec!["thread/goal/updated"],
        "broadcast"
    );
    let updated = a
        .handle
        .set_goal(
            &id,
            GoalUpdate {
                status: Some(GoalStatus::Complete),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (updated.objective.as_str(), updated.status),
        ("write docs", GoalStatus::Complete)
    );
    assert_eq!(a.handle.get_goal(&id).await.unwrap(), Some(updated.clone()));
    assert_eq!(
        store.load(id.clone()).await.unwrap().unwrap().goal,
        Some(updated)
    );
    a.drain().await;
    assert!(a
        .handle
        .responding_to(ClientRequestId::Int(2))
        .clear_goal(&id)
        .await
        .unwrap());
    assert_eq!(a.drain().await, vec!["response", "thread/goal/cleared"]);
    assert!(
        !a.handle.clear_goal(&id).await.unwrap(),
        "nothing left to clear"
    );
    assert!(
        a.drain().await.is_empty(),
        "no broadcast when nothing was cleared"
    );
}

#[actix::test]
async fn goals_of_an_unloaded_thread_are_read_and_written_in_the_store() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    a.turn(&id, "x").await;
    a.until_turn_completed().await;
    a.handle.close_thread(&id).await.unwrap();
    a.drain().await;
    let g = a
        .handle
        .set_goal(
            &id,
            GoalUpdate {
                objective: Some("later".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(a.drain().await, vec!["thread/goal/updated"]);
    assert!(
        host.loaded_threads().is_empty(),
        "goal writes do not load the thread"
    );
    let s = a.handle.resume(&id, true).await.unwrap();
    assert_eq!(s.meta.id, id);
    let goal_snapshot = a.drain_messages().await.into_iter().find_map(|m| match m {
        Outbound::Notification(n) => match n.as_ref() {
            Notification::GoalUpdated { goal, .. } => Some(Goal::clone(goal)),
            _ => None,
        },
        _ => None,
    });
    assert_eq!(goal_snapshot, Some(g));
}

#[actix::test]
async fn an_ephemeral_thread_keeps_nothing_in_the_store() {
    tokio::time::pause();
    let (host, store, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let s = a
        .handle
        .start_thread(StartThread {
            ephemeral: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(s.to_json()["ephemeral"], true);
    let id = s.meta.id;
    a.turn(&id, "a title please").await;
    a.until_turn_completed().await;
    a.handle
        .set_goal(
            &id,
            GoalUpdate {
                objective: Some("x".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store.load(id.clone()).await.unwrap(),
        None,
        "nothing stored"
    );
    let (listed, _) = a
        .handle
        .list_threads(ListQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(listed.is_empty());
    a.handle.close_thread(&id).await.unwrap();
    let err = a.handle.resume(&id, false).await.unwrap_err();
    assert_eq!(err, HostError::NoRollout(id));
}

// ---- agent events: each turn's own channel ------------------------------------------------------

/// An agent whose turns start an agent message and then wait forever, handing their context to
/// the test so it can emit on it later, also after the turn ended.
#[derive(Default)]
struct Leaky(std::sync::Arc<std::sync::Mutex<Vec<TurnContext>>>);

impl AgentFactory for Leaky {
    fn models(&self) -> Vec<ModelInfo> {
        vec![ModelInfo {
            id: SCRIPTED_MODEL.to_owned(),
            display_name: "leaky".to_owned(),
            description: "keeps its turn contexts".to_owned(),
            is_default: true,
        }]
    }

    fn create(&self, _: &ThreadId, _: &str) -> Result<Box<dyn Agent>, AgentError> {
        Ok(Box::new(LeakyAgent(std::sync::Arc::clone(&self.0))))
    }
}

struct LeakyAgent(std::sync::Arc<std::sync::Mutex<Vec<TurnContext>>>);

impl Agent for LeakyAgent {
    fn run_turn(
        &mut self,
        _input: TurnInput,
        ctx: TurnContext,
    ) -> LocalBoxFuture<'static, Result<(), TurnError>> {
        self.0.lock().unwrap().push(ctx.clone());
        Box::pin(async move {
            ctx.item_started(ThreadItem::AgentMessage {
                id: "msg".to_owned(),
                text: String::new(),
            });
            std::future::pending::<()>().await;
            Ok(())
        })
    }

    fn shutdown(&mut self) -> Result<LocalBoxFuture<'static, ()>, AgentError> {
        Ok(Box::pin(async {}))
    }
}

#[actix::test]
async fn events_from_an_ended_turns_context_reach_nobody() {
    tokio::time::pause();
    let agents = std::sync::Arc::new(Leaky::default());
    let contexts = std::sync::Arc::clone(&agents.0);
    let host = ThreadHost::start(
        HostConfig {
            unload_delay: DELAY,
            arbiters: 0,
            ..HostConfig::default()
        },
        agents,
        std::sync::Arc::new(MemoryStore::new()),
    );
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    let first = a.turn(&id, "one").await;
    a.until("item/started").await; // the user message
    a.until("item/started").await; // the agent message
    a.handle.interrupt(&id, &first.id).await.unwrap();
    a.until("turn/completed").await;
    let second = a.turn(&id, "two").await;
    a.drain().await;
    let (old, new) = {
        let c = contexts.lock().unwrap();
        (c[0].clone(), c[1].clone())
    };
    assert_eq!(old.turn_id(), first.id);
    old.agent_message_delta("msg", "stale");
    new.agent_message_delta("msg", "fresh");
    let deltas: Vec<(String, String)> = a
        .drain_messages()
        .await
        .iter()
        .filter_map(|m| match m {
            Outbound::Notification(n) => match n.as_ref() {
                Notification::AgentMessageDelta { turn_id, delta, .. } => {
                    Some((turn_id.to_string(), delta.clone()))
                }
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(deltas, vec![(second.id.clone(), "fresh".to_owned())]);
    // The stale delta is not in the running turn either.
    let snap = a.handle.read(&id, true).await.unwrap();
    let text = snap.turns.iter().find(|t| t.id == second.id).and_then(|t| {
        t.items.iter().find_map(|i| match i {
            ThreadItem::AgentMessage { text, .. } => Some(text.clone()),
            _ => None,
        })
    });
    assert_eq!(text.as_deref(), Some("fresh"));
}
