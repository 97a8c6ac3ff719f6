//! The run lifecycle: admit → record → attempt → retry → finish, deadlines, cancel, overlap,
//! and what the history and the events record of each.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::*;

#[tokio::test(start_paused = true)]
async fn a_run_is_recorded_running_then_attempted_then_finished_in_that_order() {
    let h = harness(config());
    h.runner.script(
        "doc",
        [Attempt::Succeed {
            after: Duration::from_secs(5),
        }],
    );
    let t0 = Instant::now();
    let started = h
        .manager
        .start_run("doc", request(None))
        .await
        .expect("admitted");

    // Step 2: on disk as running before anything ran.
    let row = h.history.get(started.id).expect("read").expect("recorded");
    assert_eq!(row.outcome, RunOutcome::Running);
    assert_eq!((row.agent.as_str(), row.task.as_str()), ("doc", "generate"));
    assert_eq!(row.caller.as_deref(), Some("ops"));
    assert_eq!(row.trigger, Trigger::Api);
    assert_eq!(row.finished_at, None);

    // Step 3: the attempt gets the task and its input as JSON.
    h.runner.wait_started(1).await;
    let attempt = &h.runner.attempts()[0];
    assert_eq!(attempt.task, "generate");
    assert_eq!(
        serde_json::from_str::<Value>(&attempt.input).expect("json input"),
        json!({ "topic": "rollback" })
    );
    let listed = h.manager.list().await.expect("list");
    let doc = listed.iter().find(|v| v.name == "doc").expect("doc listed");
    assert_eq!(doc.running, vec![started.id]);
    assert!(
        run_finished(&h.events).is_empty(),
        "nothing published mid-run"
    );

    // Step 5: the outcome, persisted, then published.
    let result = started.done.await.expect("answered");
    assert_elapsed(t0.elapsed(), Duration::from_secs(5));
    assert!(result.persisted);
    assert!(result.failure.is_none());
    assert_eq!(result.record.outcome, RunOutcome::Succeeded);
    assert_eq!(result.record.attempts, 1);
    assert_eq!(result.record.generation, Some(1));
    assert_eq!(
        result.record.summary.as_deref(),
        Some("done by generation 1")
    );
    assert_eq!(result.record.output, Some(json!({ "generation": 1 })));
    assert_eq!(result.artifacts, ["/data/report.md"]);
    assert_eq!(result.logs_dropped, 1);

    let row = h.history.get(started.id).expect("read").expect("recorded");
    assert_eq!(row.outcome, RunOutcome::Succeeded);
    assert_eq!(row.attempts, 1);
    assert!(row.finished_at.is_some());
    assert_eq!(row.summary, result.record.summary);

    let finished = run_finished(&h.events);
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0].subject, "doc");
    assert_eq!(finished[0].data["run_id"], json!(started.id));
    assert_eq!(finished[0].data["outcome"], json!("succeeded"));
    assert_eq!(finished[0].data["attempts"], json!(1));
    assert_eq!(finished[0].data["generation"], json!(1));

    let listed = h.manager.list().await.expect("list");
    let doc = listed.iter().find(|v| v.name == "doc").expect("doc listed");
    assert!(doc.running.is_empty(), "released once finished");
    assert_eq!((doc.stats.runs, doc.stats.succeeded), (1, 1));
    let inventory = h.manager.inventory();
    let doc = inventory.iter().find(|a| a.name == "doc").expect("doc");
    assert_eq!(
        (doc.runs, doc.successes),
        (1, 1),
        "counters follow the history"
    );
}

#[tokio::test(start_paused = true)]
async fn retryable_errors_are_retried_after_a_doubling_jittered_backoff() {
    let h = harness(config());
    let refuse = Attempt::Refuse {
        after: SHORT,
        code: ErrorCode::Unavailable,
        retryable: true,
    };
    h.runner.script(
        "doc",
        [refuse.clone(), refuse, Attempt::Succeed { after: SHORT }],
    );
    let result = h.manager.run("doc", request(None)).await.expect("ran");
    assert_eq!(result.record.outcome, RunOutcome::Succeeded);
    assert_eq!(result.record.attempts, 3);
    assert_eq!(result.logs_dropped, 3, "summed over the attempts");

    let starts: Vec<Instant> = h.runner.attempts().iter().map(|a| a.at).collect();
    let base = Duration::from_millis(config().retry_backoff_ms);
    for (retry, pair) in starts.windows(2).enumerate() {
        let backoff = pair[1] - pair[0] - SHORT;
        let ceiling = base * 2u32.pow(retry as u32);
        assert!(
            backoff >= ceiling / 2 && backoff <= ceiling + TICK,
            "retry {}: waited {backoff:?}, expected within [{:?}, {ceiling:?}]",
            retry + 1,
            ceiling / 2
        );
    }
    let row = h.history.get(result.record.id).expect("read").expect("row");
    assert_eq!(row.attempts, 3);
    assert_eq!(run_finished(&h.events)[0].data["attempts"], json!(3));
}

#[tokio::test(start_paused = true)]
async fn retries_stop_after_max_retries_with_the_agents_last_error() {
    let h = harness(config());
    let refuse = Attempt::Refuse {
        after: Duration::ZERO,
        code: ErrorCode::Unavailable,
        retryable: true,
    };
    h.runner.script("doc", std::iter::repeat_n(refuse, 5));
    let result = h.manager.run("doc", request(None)).await.expect("ran");
    let attempts = config().max_retries + 1;
    assert_eq!(result.record.attempts, attempts);
    assert_eq!(h.runner.attempts().len(), attempts as usize);
    assert_eq!(h.runner.unused("doc"), 5 - attempts as usize);
    assert_eq!(result.record.outcome, RunOutcome::Failed);
    assert_eq!(error_code(&result), Some("plugin:unavailable"));
    assert_eq!(
        result.record.error.as_deref(),
        Some("unavailable from generation 1")
    );
    assert!(matches!(
        result.failure,
        Some(Failure::Plugin(PluginError {
            retryable: true,
            ..
        }))
    ));
}

#[tokio::test(start_paused = true)]
async fn errors_not_marked_retryable_and_call_errors_end_the_run_at_once() {
    let h = harness(config());
    h.runner.script(
        "doc",
        [
            Attempt::Refuse {
                after: SHORT,
                code: ErrorCode::InvalidInput,
                retryable: false,
            },
            Attempt::Trap { after: SHORT },
            Attempt::Succeed { after: SHORT },
        ],
    );
    let refused = h.manager.run("doc", request(None)).await.expect("ran");
    assert_eq!(refused.record.attempts, 1);
    assert_eq!(error_code(&refused), Some("plugin:invalid-input"));
    assert!(matches!(refused.failure, Some(Failure::Plugin(_))));

    let trapped = h.manager.run("doc", request(None)).await.expect("ran");
    assert_eq!(
        trapped.record.attempts, 1,
        "host-side failures are not retried"
    );
    let trap_code = CallError::Trap {
        plugin: String::new(),
        message: String::new(),
    }
    .code();
    assert_eq!(error_code(&trapped), Some(trap_code));
    assert!(matches!(
        trapped.failure,
        Some(Failure::Call(CallError::Trap { .. }))
    ));
    assert_eq!(h.runner.unused("doc"), 1);
}

#[tokio::test(start_paused = true)]
async fn no_retry_when_the_backoff_would_pass_the_run_deadline() {
    let h = harness(AgentsConfig {
        // At least 2.5 s after the first failure: past a 2 s deadline.
        retry_backoff_ms: 5_000,
        ..config()
    });
    h.runner.script(
        "doc",
        [
            Attempt::Refuse {
                after: Duration::ZERO,
                code: ErrorCode::Timeout,
                retryable: true,
            },
            Attempt::Succeed {
                after: Duration::ZERO,
            },
        ],
    );
    let t0 = Instant::now();
    let result = h
        .manager
        .run("doc", request(Some(Duration::from_secs(2))))
        .await
        .expect("ran");
    assert_elapsed(t0.elapsed(), Duration::ZERO);
    assert_eq!(result.record.attempts, 1);
    assert_eq!(h.runner.unused("doc"), 1, "the second attempt never ran");
    assert_eq!(error_code(&result), Some("plugin:timeout"));
    let error = result.record.error.as_deref().unwrap_or_default();
    assert!(
        error.ends_with("(no retry: the backoff would pass the run's deadline)"),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_run_deadline_drops_the_attempt_in_flight() {
    let h = harness(config());
    h.runner.script("doc", [Attempt::Hang]);
    let t0 = Instant::now();
    let result = h
        .manager
        .run("doc", request(Some(Duration::from_secs(3))))
        .await
        .expect("ran");
    assert_elapsed(t0.elapsed(), Duration::from_secs(3));
    assert_eq!(h.runner.dropped(), 1, "the hanging attempt was dropped");
    assert_eq!(result.record.outcome, RunOutcome::Failed);
    assert_eq!(error_code(&result), Some("run_deadline_exceeded"));
    assert!(matches!(
        result.failure,
        Some(Failure::Deadline { deadline_ms: 3_000 })
    ));
    let row = h.history.get(result.record.id).expect("read").expect("row");
    assert_eq!(row.outcome, RunOutcome::Failed);
    assert_eq!(row.error_code.as_deref(), Some("run_deadline_exceeded"));
    assert_eq!(
        run_finished(&h.events)[0].data["error_code"],
        json!("run_deadline_exceeded")
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_may_shorten_the_run_deadline_but_not_lengthen_it() {
    let h = harness(AgentsConfig {
        run_deadline_s: 2,
        ..config()
    });
    h.runner.script("doc", [Attempt::Hang]);
    let t0 = Instant::now();
    let result = h
        .manager
        .run("doc", request(Some(Duration::from_secs(10))))
        .await
        .expect("ran");
    assert_elapsed(t0.elapsed(), Duration::from_secs(2));
    assert!(matches!(
        result.failure,
        Some(Failure::Deadline { deadline_ms: 2_000 })
    ));
}

#[tokio::test(start_paused = true)]
async fn the_deadline_bounds_attempts_and_backoffs_together() {
    let h = harness(config());
    h.runner.script(
        "doc",
        [
            Attempt::Refuse {
                after: Duration::from_secs(1),
                code: ErrorCode::Unavailable,
                retryable: true,
            },
            Attempt::Hang,
        ],
    );
    let t0 = Instant::now();
    let result = h
        .manager
        .run("doc", request(Some(Duration::from_secs(5))))
        .await
        .expect("ran");
    assert_elapsed(t0.elapsed(), Duration::from_secs(5));
    assert_eq!(result.record.attempts, 2);
    assert_eq!(h.runner.dropped(), 1);
    assert!(matches!(
        result.failure,
        Some(Failure::Deadline { deadline_ms: 5_000 })
    ));
}

#[tokio::test(start_paused = true)]
async fn cancel_drops_the_attempt_in_flight_and_records_cancelled() {
    let h = harness(config());
    h.runner.script("doc", [Attempt::Hang]);
    let t0 = Instant::now();
    let started = h
        .manager
        .start_run("doc", request(None))
        .await
        .expect("admitted");
    h.runner.wait_started(1).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    h.manager.cancel("doc", started.id).expect("cancellable");
    let result = started.done.await.expect("answered");
    assert_elapsed(t0.elapsed(), Duration::from_secs(1));
    assert_eq!(h.runner.dropped(), 1);
    assert_eq!(result.record.outcome, RunOutcome::Cancelled);
    assert_eq!(error_code(&result), Some("cancelled"));
    assert!(matches!(result.failure, Some(Failure::Cancelled)));
    let row = h.history.get(started.id).expect("read").expect("row");
    assert_eq!(row.outcome, RunOutcome::Cancelled);
    assert_eq!(
        run_finished(&h.events)[0].data["outcome"],
        json!("cancelled")
    );

    for (agent, run_id) in [
        ("doc", started.id),
        ("doc", started.id + 1),
        ("fleet", started.id),
    ] {
        assert!(
            matches!(
                h.manager.cancel(agent, run_id),
                Err(AgentError::RunNotFound { .. })
            ),
            "{agent} run {run_id} is not in progress"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn cancel_during_a_backoff_ends_the_run_without_another_attempt() {
    let h = harness(AgentsConfig {
        retry_backoff_ms: 10_000,
        ..config()
    });
    h.runner.script(
        "doc",
        [
            Attempt::Refuse {
                after: Duration::ZERO,
                code: ErrorCode::Unavailable,
                retryable: true,
            },
            Attempt::Succeed {
                after: Duration::ZERO,
            },
        ],
    );
    let t0 = Instant::now();
    let started = h
        .manager
        .start_run("doc", request(None))
        .await
        .expect("admitted");
    // The run's task goes from the answer straight into its backoff, within one poll.
    h.runner.wait_answered(1).await;
    h.manager.cancel("doc", started.id).expect("cancellable");
    let result = started.done.await.expect("answered");
    assert_elapsed(t0.elapsed(), Duration::ZERO);
    assert_eq!(result.record.outcome, RunOutcome::Cancelled);
    assert_eq!(result.record.attempts, 1);
    assert_eq!(h.runner.unused("doc"), 1, "no attempt after the cancel");
}

#[tokio::test(start_paused = true)]
async fn a_second_run_is_refused_while_one_is_in_progress_unless_overlap_is_allowed() {
    let h = harness(config());
    h.runner.script(
        "doc",
        [
            Attempt::Hang,
            Attempt::Succeed {
                after: Duration::ZERO,
            },
        ],
    );
    let first = h
        .manager
        .start_run("doc", request(None))
        .await
        .expect("admitted");
    match h.manager.start_run("doc", request(None)).await {
        Err(AgentError::AlreadyRunning { agent, run_id, .. }) => {
            assert_eq!(agent, "doc");
            assert_eq!(run_id, Some(first.id), "names the run in progress");
        }
        other => panic!("expected AlreadyRunning, got {other:?}"),
    }
    let rows = h.history.runs("doc", 10, None).expect("runs");
    assert_eq!(rows.len(), 1, "a refused run is not recorded");

    // Cancelled once its attempt runs, so the script's next attempt is the next run's.
    h.runner.wait_started(1).await;
    h.manager.cancel("doc", first.id).expect("cancellable");
    first.done.await.expect("answered");
    let next = h
        .manager
        .run("doc", request(None))
        .await
        .expect("admitted once free");
    assert_eq!(next.record.outcome, RunOutcome::Succeeded);

    // `fleet` has `overlap = true`: both runs are admitted and in progress together.
    h.runner.script("fleet", [Attempt::Hang, Attempt::Hang]);
    let one = h
        .manager
        .start_run("fleet", request(None))
        .await
        .expect("one");
    let two = h
        .manager
        .start_run("fleet", request(None))
        .await
        .expect("two");
    h.runner.wait_started(4).await;
    let listed = h.manager.list().await.expect("list");
    let fleet = listed.iter().find(|v| v.name == "fleet").expect("fleet");
    assert_eq!(fleet.running, vec![one.id, two.id]);
    for run in [one, two] {
        h.manager.cancel("fleet", run.id).expect("cancellable");
        run.done.await.expect("answered");
    }
}

#[tokio::test(start_paused = true)]
async fn names_not_loaded_as_meta_agents_are_refused_and_not_recorded() {
    let h = harness(config());
    assert!(matches!(
        h.manager.start_run("ghost", request(None)).await,
        Err(AgentError::NotFound { .. })
    ));
    match h.manager.start_run("pinger", request(None)).await {
        Err(AgentError::NotAnAgent { kind, .. }) => assert_eq!(kind, "health-checker"),
        other => panic!("expected NotAnAgent, got {other:?}"),
    }
    for name in ["ghost", "pinger"] {
        assert!(h.history.runs(name, 10, None).expect("runs").is_empty());
    }
    assert!(h.runner.attempts().is_empty());
    assert!(run_finished(&h.events).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_run_records_the_generation_that_served_its_last_attempt() {
    let h = harness(config());
    h.runner.script(
        "doc",
        [
            Attempt::Refuse {
                after: Duration::from_secs(1),
                code: ErrorCode::Unavailable,
                retryable: true,
            },
            Attempt::Succeed {
                after: Duration::ZERO,
            },
        ],
    );
    let started = h
        .manager
        .start_run("doc", request(None))
        .await
        .expect("admitted");
    h.runner.wait_started(1).await;
    // A hot reload between the two attempts.
    h.runner.reload("doc");
    let result = started.done.await.expect("answered");
    let served: Vec<u64> = h.runner.attempts().iter().map(|a| a.generation).collect();
    assert_eq!(served, [1, 2]);
    assert_eq!(result.record.generation, Some(2));
    assert_eq!(
        result.record.summary.as_deref(),
        Some("done by generation 2")
    );
    assert_eq!(run_finished(&h.events)[0].data["generation"], json!(2));
}

#[tokio::test(start_paused = true)]
async fn each_agents_history_is_pruned_whatever_ids_its_runs_get() {
    let keep = 3;
    let h = harness(AgentsConfig {
        runs_kept: keep,
        ..config()
    });
    // Interleaved, `doc` gets only odd run ids and `fleet` only even ones: a prune keyed to the
    // global id (every 64th) would never reach `doc`.
    let rounds = keep as usize + super::super::run::PRUNE_SLACK as usize + 3;
    for _ in 0..rounds {
        for agent in ["doc", "fleet"] {
            h.runner.script(agent, [Attempt::Succeed { after: SHORT }]);
            let result = h.manager.run(agent, request(None)).await.expect("ran");
            assert_eq!(result.record.outcome, RunOutcome::Succeeded);
        }
    }
    let bound = u64::from(keep) + super::super::run::PRUNE_SLACK;
    for agent in ["doc", "fleet"] {
        let kept = h.history.stats(agent).expect("stats").runs;
        assert!(
            (u64::from(keep)..=bound).contains(&kept),
            "{agent} keeps {kept} of {rounds} runs, expected {keep}..={bound}"
        );
        // The newest run survives its own prune.
        let newest = h.history.runs(agent, 1, None).expect("runs");
        assert_eq!(newest.len(), 1);
    }
    // The counters follow the pruned history.
    let inventory = h.manager.inventory();
    let doc = inventory.iter().find(|a| a.name == "doc").expect("doc");
    assert_eq!(doc.runs, h.history.stats("doc").expect("stats").runs);
}
