//! Actor-level tests of spec section 7 (supervision, generations), bounded connection queues,
//! and the absence of leaks.

use std::time::Duration;

use threadhost_actors::testkit::{advance, settle, test_host, test_host_with, Probe};
use threadhost_actors::*;

const DELAY: Duration = Duration::from_secs(60);
const TICK: Duration = Duration::from_millis(2);

#[actix::test]
async fn a_panic_in_a_handler_restarts_the_thread_with_its_subscribers() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    let err = a.handle.panic_thread_handler(&id).await.unwrap_err();
    assert_eq!(
        err,
        HostError::ThreadRestarted(id.clone()),
        "the caller gets a clear error"
    );
    assert_eq!(host.metrics().restarts.get(), 1);
    let n = a.notification().await;
    assert!(
        matches!(
            n.as_ref(),
            Notification::ThreadStatusChanged {
                status: ThreadStatus::SystemError,
                ..
            }
        ),
        "{n:?}"
    );
    // Same thread id, same subscriber: a new turn streams to the same connection.
    a.turn(&id, "alive again").await;
    let seen = a.until_turn_completed().await;
    assert!(
        seen.contains(&"item/agentMessage/delta".to_owned()),
        "{seen:?}"
    );
    assert_eq!(host.loaded_threads(), vec![id]);
}

#[actix::test]
async fn a_panic_while_starting_a_turn_fails_the_call_and_restarts_the_thread() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    let err = a
        .handle
        .start_turn(&id, vec![UserInput::text("/panic-now")])
        .await
        .unwrap_err();
    assert_eq!(err, HostError::ThreadRestarted(id.clone()));
    a.drain().await;
    let s = a.handle.read(&id, true).await.unwrap();
    assert_eq!(s.status, ThreadStatus::SystemError);
}

#[actix::test]
async fn a_panic_in_the_agent_fails_the_turn_and_reports_an_error_to_subscribers() {
    tokio::time::pause();
    let (host, store, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    a.turn(&id, "/panic").await;
    let seen = a.until_turn_completed().await;
    assert!(seen.contains(&"error".to_owned()), "{seen:?}");
    let s = a.handle.read(&id, true).await.unwrap();
    assert_eq!(s.status, ThreadStatus::SystemError);
    assert_eq!(s.turns.last().map(|t| t.status), Some(TurnStatus::Failed));
    assert_eq!(
        store.load(id.clone()).await.unwrap().unwrap().turns[0].status,
        TurnStatus::Failed
    );
    assert_eq!(host.metrics().restarts.get(), 1);
    assert_eq!(
        host.metrics().agent_tasks.get(),
        0,
        "the panicked task is gone"
    );
}

#[actix::test]
async fn past_the_restart_bound_the_thread_unloads_and_stays_resumable() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    a.turn(&id, "keep me").await;
    a.until_turn_completed().await;
    for _ in 0..3 {
        a.turn(&id, "/panic").await;
        a.until_turn_completed().await;
    }
    assert_eq!(
        host.loaded_threads(),
        vec![id.clone()],
        "three restarts are within the bound"
    );
    a.turn(&id, "/panic").await;
    a.until("thread/closed").await;
    assert!(host.loaded_threads().is_empty());
    let s = a
        .handle
        .resume(&id, false)
        .await
        .expect("resumable from the store");
    assert_eq!(s.turns.len(), 5);
    assert_eq!(s.turns[0].status, TurnStatus::Completed);
}

#[actix::test]
async fn restarts_older_than_the_period_do_not_count_toward_the_bound() {
    tokio::time::pause();
    let (host, _, _) = test_host(Duration::from_secs(3600));
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    for _ in 0..6 {
        a.turn(&id, "/panic").await;
        a.until_turn_completed().await;
        advance(Duration::from_secs(30)).await;
    }
    assert_eq!(
        host.loaded_threads(),
        vec![id],
        "two restarts per minute never exceed 3 in 60 s"
    );
}

#[actix::test]
async fn a_superseded_generation_timer_does_nothing_and_the_thread_unloads_once() {
    tokio::time::pause();
    let (host, _, _) = test_host(DELAY);
    let mut a = Probe::connect(&host);
    let mut watcher = Probe::connect(&host);
    let id = a.start_thread().await;
    a.handle.unsubscribe(&id).await.unwrap();
    advance(DELAY / 2).await;
    // A restart moves the generation on; the timer armed before it must not act for it.
    let _ = a.handle.panic_thread_handler(&id).await;
    advance(DELAY / 2 + TICK).await;
    advance(DELAY).await;
    let seen = watcher.drain().await;
    assert_eq!(
        seen.iter().filter(|m| *m == "thread/closed").count(),
        1,
        "{seen:?}"
    );
    assert!(host.loaded_threads().is_empty());
}

#[actix::test]
async fn a_slow_connection_is_cut_off_while_others_keep_receiving() {
    tokio::time::pause();
    let (host, _, _) = test_host_with(HostConfig {
        unload_delay: DELAY,
        arbiters: 0,
        outbound_capacity: 8,
        ..HostConfig::default()
    });
    let mut reader = Probe::connect(&host);
    let mut slow = Probe::connect(&host);
    let id = reader.start_thread().await;
    slow.handle.resume(&id, true).await.unwrap();
    // 40 words: far more deltas than the slow client's 8 slots; the reader keeps up.
    let text = (0..40)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    reader.turn(&id, &text).await;
    let seen = reader.until_turn_completed().await;
    assert_eq!(
        seen.iter()
            .filter(|m| *m == "item/agentMessage/delta")
            .count(),
        40
    );
    let got = slow.drain_messages().await;
    match got.last() {
        Some(Outbound::Disconnected { reason }) => {
            assert!(reason.contains("not reading"), "{reason}")
        }
        other => panic!("expected a disconnect as the last message, got {other:?}"),
    }
    assert!(got.len() <= 8, "the queue stayed bounded: {}", got.len());
    assert_eq!(host.metrics().slow_disconnects.get(), 1);
    // The thread keeps serving the reader.
    reader.turn(&id, "still fine").await;
    reader.until_turn_completed().await;
}

#[actix::test]
async fn no_actors_or_timers_leak_after_1000_threads_load_and_unload() {
    tokio::time::pause();
    // The probe reads only at the end: give it room for the 2,000 broadcasts of the sweep.
    let (host, _, _) = test_host_with(HostConfig {
        unload_delay: DELAY,
        arbiters: 0,
        outbound_capacity: 10_000,
        ..HostConfig::default()
    });
    let m = host.metrics();
    let mut a = Probe::connect(&host);
    settle().await;
    let baseline = (
        m.threads.get(),
        m.timers.get(),
        m.agent_tasks.get(),
        m.connections.get(),
    );
    let mut ids = Vec::new();
    for i in 0..1000 {
        let id = a.start_thread().await;
        if i % 10 == 0 {
            a.turn(&id, "a turn").await;
            a.until_turn_completed().await;
            a.drain().await;
        }
        a.handle.unsubscribe(&id).await.unwrap();
        ids.push(id);
    }
    settle().await;
    assert_eq!(m.threads.get(), baseline.0 + 1000);
    assert!(
        m.timers.get() >= 1000,
        "every unsubscribed idle thread has its timer armed"
    );
    advance(DELAY + TICK).await;
    advance(TICK).await;
    a.drain().await;
    assert!(host.loaded_threads().is_empty());
    assert_eq!(m.unloads_complete.get(), 1000);
    let after = (
        m.threads.get(),
        m.timers.get(),
        m.agent_tasks.get(),
        m.connections.get(),
    );
    assert_eq!(
        after, baseline,
        "(threads, timers, agent tasks, connections) back to the baseline"
    );
    assert_eq!(m.teardowns_in_flight.get(), 0);
    assert_eq!(m.pending_requests.get(), 0);
}
