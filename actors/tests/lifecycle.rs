//! Actor-level tests of spec sections 3 to 6: status, subscriptions, idle unload, teardown.
//! Time is paused; every wait is bounded by the probe's `recv`.

use std::time::Duration;

use threadhost_actors::testkit::{advance, settle, test_host, Probe};
use threadhost_actors::*;

const DELAY: Duration = Duration::from_secs(60);
const SEC: Duration = Duration::from_secs(1);
/// tokio rounds timer deadlines up to the next millisecond: step this far past a deadline.
const TICK: Duration = Duration::from_millis(2);

fn status_of(n: &Notification) -> ThreadStatus {
    match n {
        Notification::ThreadStatusChanged { status, .. } => status.clone(),
        other => panic!("expected thread/status/changed, got {other:?}"),
    }
}

// ---- section 3: status --------------------------------------------------------------------

#[actix::test]
async fn thread_start_emits_thread_started_and_no_status_change() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let mut b = Probe::connect(&host);
    let id = a.start_thread().await;
    assert_eq!(
        b.drain().await,
        vec!["thread/started"],
        "thread/started is broadcast"
    );
    assert!(
        a.drain().await.is_empty(),
        "no status change for a new thread"
    );
    assert_eq!(host.loaded_threads(), vec![id]);
}

#[actix::test]
async fn status_goes_active_then_idle_around_a_turn_and_is_broadcast_only_on_change() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let mut observer = Probe::connect(&host);
    let id = a.start_thread().await;
    observer.drain().await;
    a.turn(&id, "hello world").await;
    a.until_turn_completed().await;
    let seen = observer.drain_messages().await;
    let statuses: Vec<ThreadStatus> = seen
        .iter()
        .filter_map(|m| match m {
            Outbound::Notification(n) if n.method() == "thread/status/changed" => {
                Some(status_of(n))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        statuses,
        vec![
            ThreadStatus::Active {
                active_flags: vec![]
            },
            ThreadStatus::Idle
        ]
    );
    assert_eq!(
        seen.len(),
        2,
        "a non-subscriber sees only the broadcasts: {seen:?}"
    );
}

#[actix::test]
async fn a_failed_turn_sets_system_error_and_the_next_turn_clears_it() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    a.turn(&id, "/fail").await;
    let seen = a.until_turn_completed().await;
    assert!(
        seen.contains(&"error".to_owned()),
        "an error notification precedes turn/completed: {seen:?}"
    );
    let after = a.notification().await;
    assert_eq!(status_of(&after), ThreadStatus::SystemError);
    a.turn(&id, "again").await;
    a.until_turn_completed().await;
    let s = a.handle.read(&id, false).await.unwrap();
    assert_eq!(s.status, ThreadStatus::Idle);
}

#[actix::test]
async fn a_pending_approval_sets_waiting_on_approval_and_answering_clears_it() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    a.turn(&id, "/approve ls -la").await;
    let req = match a.until("item/commandExecution/requestApproval").await {
        Outbound::Request(r) => r,
        other => panic!("{other:?}"),
    };
    let s = a.handle.read(&id, false).await.unwrap();
    assert_eq!(
        s.status,
        ThreadStatus::Active {
            active_flags: vec![ActiveFlag::WaitingOnApproval]
        }
    );
    assert!(
        a.handle
            .answer(req.id, serde_json::json!({"decision": "accept"}))
            .await
    );
    a.until_turn_completed().await;
    assert_eq!(
        a.handle.read(&id, false).await.unwrap().status,
        ThreadStatus::Idle
    );
}

#[actix::test]
async fn a_connection_that_opted_out_does_not_receive_those_notifications() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a =
        Probe::connect_opting_out(&host, &["thread/status/changed", "item/agentMessage/delta"]);
    let id = a.start_thread().await;
    a.turn(&id, "one two three").await;
    let seen = a.until_turn_completed().await;
    assert!(
        !seen.iter().any(|m| m == "item/agentMessage/delta"),
        "{seen:?}"
    );
    assert!(!a.drain().await.iter().any(|m| m == "thread/status/changed"));
}

// ---- section 4: subscriptions --------------------------------------------------------------

#[actix::test]
async fn unsubscribe_reports_unsubscribed_then_not_subscribed_then_not_loaded() {
    tokio::time::pause();
    let (host, _, _) = test_host(Duration::ZERO);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    assert_eq!(
        a.handle.unsubscribe(&id).await.unwrap(),
        UnsubscribeStatus::Unsubscribed
    );
    assert_eq!(
        a.handle.unsubscribe(&id).await.unwrap(),
        UnsubscribeStatus::NotSubscribed
    );
    a.until("thread/closed").await;
    assert_eq!(
        a.handle.unsubscribe(&id).await.unwrap(),
        UnsubscribeStatus::NotLoaded
    );
}

#[actix::test]
async fn unsubscribe_never_unloads_by_itself() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    a.handle.unsubscribe(&id).await.unwrap();
    advance(DELAY - SEC).await;
    assert_eq!(
        host.loaded_threads(),
        vec![id.clone()],
        "still loaded before the delay ends"
    );
    assert!(a.drain().await.is_empty());
}

#[actix::test]
async fn unsubscribe_never_stops_a_running_turn_and_the_turn_blocks_unload() {
    tokio::time::pause();
    let (host, store, _) = test_host(Duration::from_secs(1));
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    a.turn(&id, "/sleep 10000").await;
    a.handle.unsubscribe(&id).await.unwrap();
    advance(Duration::from_secs(5)).await;
    assert_eq!(
        host.loaded_threads(),
        vec![id.clone()],
        "a running turn keeps the thread loaded"
    );
    advance(Duration::from_secs(6)).await;
    // The turn completed (unsubscribed, so not seen) and was stored.
    let stored = store.load(id.clone()).await.unwrap().expect("stored");
    assert_eq!(stored.turns[0].status, TurnStatus::Completed);
    a.until("thread/closed").await;
}

#[actix::test]
async fn thread_events_go_to_subscribers_only() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let mut b = Probe::connect(&host);
    let id = a.start_thread().await;
    b.drain().await;
    a.turn(&id, "hi").await;
    a.until_turn_completed().await;
    let seen_by_b = b.drain().await;
    assert_eq!(
        seen_by_b,
        vec!["thread/status/changed", "thread/status/changed"]
    );
}

#[actix::test]
async fn a_closed_connection_is_removed_from_its_threads() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let mut watcher = Probe::connect(&host);
    let id = a.start_thread().await;
    a.handle.disconnect();
    advance(DELAY + SEC).await;
    assert!(
        host.loaded_threads().is_empty(),
        "the thread lost its only subscriber and unloaded"
    );
    let seen = watcher.drain().await;
    assert_eq!(
        seen.last().map(String::as_str),
        Some("thread/closed"),
        "{seen:?} for {id}"
    );
}

// ---- section 5: idle unload -----------------------------------------------------------------

#[actix::test]
async fn an_idle_unsubscribed_thread_unloads_when_the_delay_ends() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    a.handle.unsubscribe(&id).await.unwrap();
    advance(DELAY - SEC).await;
    assert!(a.drain().await.is_empty());
    advance(SEC + TICK).await;
    let seen = a.drain_messages().await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    match (&seen[0], &seen[1]) {
        (Outbound::Notification(s), Outbound::Notification(c)) => {
            assert_eq!(status_of(s), ThreadStatus::NotLoaded);
            assert!(
                matches!(c.as_ref(), Notification::ThreadClosed { thread_id } if *thread_id == id)
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(host.loaded_threads().is_empty());
    assert_eq!(host.metrics().unloads_complete.get(), 1);
}

#[actix::test]
async fn delay_zero_unloads_as_soon_as_idle_and_unsubscribed() {
    tokio::time::pause();
    let (host, _, _) = test_host(Duration::ZERO);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    a.turn(&id, "/sleep 100").await;
    settle().await;
    a.handle.unsubscribe(&id).await.unwrap();
    settle().await;
    assert_eq!(host.loaded_threads(), vec![id.clone()], "active: not yet");
    advance(Duration::from_millis(100) + TICK).await;
    advance(TICK).await; // the zero-delay timer armed when the turn ended
    assert!(host.loaded_threads().is_empty());
    a.until("thread/closed").await;
}

#[actix::test]
async fn resubscribing_before_the_target_cancels_the_unload() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    a.handle.unsubscribe(&id).await.unwrap();
    advance(DELAY - SEC).await;
    a.handle.resume(&id, true).await.unwrap();
    advance(DELAY * 10).await;
    assert_eq!(host.loaded_threads(), vec![id]);
}

#[actix::test]
async fn resubscribing_past_the_target_cancels_the_unload() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    // Background work keeps the agent busy past the target: the delay restarts at the target.
    a.turn(&id, "/background 90000").await;
    a.until_turn_completed().await;
    a.handle.unsubscribe(&id).await.unwrap();
    advance(DELAY + SEC).await;
    assert_eq!(
        host.loaded_threads(),
        vec![id.clone()],
        "busy at the target: not unloaded"
    );
    a.handle.resume(&id, true).await.unwrap();
    advance(DELAY * 10).await;
    assert_eq!(
        host.loaded_threads(),
        vec![id],
        "a subscribed thread never unloads"
    );
}

#[actix::test]
async fn agent_work_at_the_target_restarts_a_full_delay() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    a.turn(&id, "/background 90000").await;
    a.until_turn_completed().await;
    a.handle.unsubscribe(&id).await.unwrap();
    advance(DELAY + TICK).await; // target: the agent is busy (30 s of work), a full delay restarts
    advance(DELAY - SEC).await;
    assert_eq!(host.loaded_threads(), vec![id.clone()]);
    advance(SEC + TICK).await;
    assert!(host.loaded_threads().is_empty());
}

#[actix::test]
async fn finishing_a_turn_restarts_the_full_delay() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    a.handle.unsubscribe(&id).await.unwrap();
    advance(DELAY / 2).await;
    // A client-driven turn on the unsubscribed thread (30 s long).
    a.turn(&id, "/sleep 30000").await;
    advance(Duration::from_secs(30) + TICK).await;
    advance(DELAY - SEC).await;
    assert_eq!(
        host.loaded_threads(),
        vec![id.clone()],
        "full delay counts from the turn's end"
    );
    advance(SEC + TICK).await;
    assert!(host.loaded_threads().is_empty());
}

#[actix::test]
async fn a_pending_approval_keeps_an_unsubscribed_thread_loaded() {
    tokio::time::pause();
    let (host, _, _) = test_host(Duration::ZERO);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    a.turn(&id, "/approve rm -rf /tmp/x").await;
    a.until("item/commandExecution/requestApproval").await;
    a.handle.unsubscribe(&id).await.unwrap();
    advance(Duration::from_secs(3600)).await;
    assert_eq!(host.loaded_threads(), vec![id]);
}

// ---- section 6: teardown ----------------------------------------------------------------------

#[actix::test]
async fn a_refused_shutdown_keeps_the_thread_loaded_and_consistent_and_retries_after_a_delay() {
    tokio::time::pause();
    let (host, _, agents) = test_host(DELAY);
    agents.set_shutdown(ShutdownBehavior::Refuse);
    let mut a = Probe::connect(&host);
    let mut watcher = Probe::connect(&host);
    let id = a.start_thread().await;
    a.handle.unsubscribe(&id).await.unwrap();
    advance(DELAY + TICK).await;
    assert_eq!(host.metrics().unloads_submit_failed.get(), 1);
    assert_eq!(host.loaded_threads(), vec![id.clone()]);
    assert!(
        !watcher.drain().await.iter().any(|m| m == "thread/closed"),
        "no thread/closed"
    );
    // Consistent: it can be resumed and run a turn.
    a.handle.resume(&id, false).await.unwrap();
    a.drain().await;
    a.turn(&id, "still here").await;
    a.until_turn_completed().await;
    a.handle.unsubscribe(&id).await.unwrap();
    advance(DELAY + TICK).await;
    assert_eq!(
        host.metrics().unloads_submit_failed.get(),
        2,
        "tried again after a full delay"
    );
}

#[actix::test]
async fn a_hung_shutdown_times_out_and_the_thread_stays_loaded() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    a.turn(&id, "/hang-shutdown").await;
    a.until_turn_completed().await;
    a.handle.unsubscribe(&id).await.unwrap();
    advance(DELAY + TICK).await;
    advance(SEC + TICK).await; // the 1 s shutdown bound of the test host
    assert_eq!(host.metrics().unloads_timed_out.get(), 1);
    assert_eq!(host.loaded_threads(), vec![id.clone()]);
    assert_eq!(host.metrics().teardowns_in_flight.get(), 0);
    let s = a.handle.resume(&id, false).await.unwrap();
    assert_eq!(s.turns.len(), 1);
}

#[actix::test]
async fn a_completed_shutdown_broadcasts_not_loaded_then_closed_exactly_once() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let mut b = Probe::connect(&host);
    let id = a.start_thread().await;
    b.drain().await;
    // Two explicit closes at once: the second joins the first.
    let (h1, h2) = (a.handle.clone(), b.handle.clone());
    let (i1, i2) = (id.clone(), id.clone());
    let c1 = actix_rt::spawn(async move { h1.close_thread(&i1).await });
    let c2 = actix_rt::spawn(async move { h2.close_thread(&i2).await });
    assert_eq!(c1.await.unwrap(), Ok(()));
    assert_eq!(c2.await.unwrap(), Ok(()));
    assert_eq!(
        b.drain().await,
        vec!["thread/status/changed", "thread/closed"]
    );
    assert_eq!(host.metrics().unloads_complete.get(), 1);
}

#[actix::test]
async fn a_resume_during_teardown_waits_then_resumes_cold() {
    tokio::time::pause();
    let (host, _, agents) = test_host(DELAY);
    agents.set_shutdown(ShutdownBehavior::Slow(Duration::from_millis(500)));
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    a.turn(&id, "remember me").await;
    a.until_turn_completed().await;
    a.handle.unsubscribe(&id).await.unwrap();
    advance(DELAY + TICK).await; // teardown in flight for 500 ms
    assert_eq!(host.metrics().teardowns_in_flight.get(), 1);
    let mut b = Probe::connect(&host);
    let (h, i) = (b.handle.clone(), id.clone());
    let resume = actix_rt::spawn(async move { h.resume(&i, false).await });
    advance(Duration::from_millis(600)).await;
    let snapshot = resume
        .await
        .unwrap()
        .expect("the resume waited and then succeeded");
    assert_eq!(snapshot.turns.len(), 1);
    let seen = b.drain().await;
    let closed = seen
        .iter()
        .position(|m| m == "thread/closed")
        .expect("closed first");
    let idle = seen
        .iter()
        .rposition(|m| m == "thread/status/changed")
        .expect("then idle");
    assert!(closed < idle, "{seen:?}");
    assert_eq!(host.loaded_threads(), vec![id]);
}

#[actix::test]
async fn a_resume_during_a_failing_teardown_rejoins_the_loaded_thread() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    a.turn(&id, "/hang-shutdown").await;
    a.until_turn_completed().await;
    a.handle.unsubscribe(&id).await.unwrap();
    advance(DELAY + TICK).await;
    let (h, i) = (a.handle.clone(), id.clone());
    let resume = actix_rt::spawn(async move { h.resume(&i, true).await });
    advance(Duration::from_millis(1100)).await;
    resume
        .await
        .unwrap()
        .expect("rejoined after the timed-out teardown");
    assert_eq!(host.metrics().unloads_timed_out.get(), 1);
    assert_eq!(host.loaded_threads(), vec![id]);
}

#[actix::test]
async fn turn_and_goal_requests_during_teardown_get_the_closing_error() {
    tokio::time::pause();
    let (host, _, agents) = test_host(DELAY);
    agents.set_shutdown(ShutdownBehavior::Slow(Duration::from_millis(500)));
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    a.handle.unsubscribe(&id).await.unwrap();
    advance(DELAY + TICK).await;
    let err = a
        .handle
        .start_turn(&id, vec![UserInput::text("x")])
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("thread {id} is closing; retry after the thread is closed")
    );
    let err = a.handle.interrupt(&id, "t").await.unwrap_err();
    assert!(matches!(err, HostError::Closing(_)), "{err}");
    advance(Duration::from_millis(600)).await;
    assert!(host.loaded_threads().is_empty());
}

#[actix::test]
async fn thread_close_interrupts_a_running_turn_and_answers_after_thread_closed() {
    tokio::time::pause();
    let (host, store, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    a.turn(&id, "/sleep 100000").await;
    a.until("turn/started").await;
    a.handle
        .responding_to(ClientRequestId::Int(7))
        .close_thread(&id)
        .await
        .unwrap();
    let seen = a.drain().await;
    let completed = seen
        .iter()
        .position(|m| m == "turn/completed")
        .expect("turn/completed");
    let closed = seen
        .iter()
        .position(|m| m == "thread/closed")
        .expect("thread/closed");
    let response = seen.iter().position(|m| m == "response").expect("response");
    assert!(completed < closed && closed < response, "{seen:?}");
    let stored = store.load(id).await.unwrap().expect("stored");
    assert_eq!(stored.turns[0].status, TurnStatus::Interrupted);
}

#[actix::test]
async fn an_admitted_resume_is_never_lost_to_a_concurrent_unload() {
    tokio::time::pause();
    for yields in 0..16 {
        let (host, _, _) = test_host(DELAY);
        let mut a = Probe::connect(&host);
        let id = a.start_thread().await;
        a.turn(&id, "x").await;
        a.until_turn_completed().await;
        a.handle.unsubscribe(&id).await.unwrap();
        advance(DELAY - Duration::from_millis(1)).await;
        let (h, i) = (a.handle.clone(), id.clone());
        let resume = actix_rt::spawn(async move {
            for _ in 0..yields {
                tokio::task::yield_now().await;
            }
            h.resume(&i, true).await
        });
        advance(Duration::from_millis(1) + TICK).await;
        advance(SEC).await;
        resume
            .await
            .unwrap()
            .expect("the resume succeeds, warm or cold");
        assert_eq!(
            host.loaded_threads(),
            vec![id.clone()],
            "loaded after the resume ({yields} yields)"
        );
        a.drain().await;
        a.turn(&id, "after").await;
        a.until_turn_completed().await;
    }
}

#[actix::test]
async fn raw_events_are_a_sticky_opt_in_of_thread_start_that_resume_never_turns_on() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let raw = a
        .handle
        .start_thread(StartThread {
            raw_events: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .meta
        .id;
    let plain = a
        .handle
        .start_thread(StartThread::default())
        .await
        .unwrap()
        .meta
        .id;
    a.drain().await;
    let mut b = Probe::connect(&host);
    b.handle.resume(&raw, true).await.unwrap();
    b.handle.resume(&plain, true).await.unwrap();
    b.drain().await;
    for (id, expected) in [(&raw, 1), (&plain, 0)] {
        a.turn(id, "some words").await;
        let seen = a.until_turn_completed().await;
        let raw_items = seen
            .iter()
            .filter(|m| *m == "rawResponseItem/completed")
            .count();
        assert_eq!(raw_items, expected, "subscriber of {id}");
        let seen = b.until_turn_completed().await;
        let raw_items = seen
            .iter()
            .filter(|m| *m == "rawResponseItem/completed")
            .count();
        assert_eq!(raw_items, expected, "resumed subscriber of {id}");
        a.drain().await;
        b.drain().await;
    }
}
