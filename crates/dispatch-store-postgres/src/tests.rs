//! The conformance suite, each case in a schema of its own on the server
//! named by `DISPATCH_TEST_POSTGRES`, and what only PostgreSQL can show:
//! two handles racing on one database, a lost connection healing, the
//! store called from a tokio runtime's blocking threads, migrations.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

use dispatch_core::{TaskId, TaskState};
use dispatch_store::conformance::{sample, sample_schedule};
use dispatch_store::{
    ErrorKind, FireOutcome, GroupCommitWriter, InsertOutcome, Replica, Store, StoreError,
    TaskQuery, TaskRecord, TaskUpdate, Write, WriteOutcome,
};
use tokio_postgres::Client;

use crate::codec::pg_error;
use crate::{Durability, PgOptions, PgStore};

/// The test server's URL. Missing, the tests fail: a store test that
/// silently passes without a database tests nothing.
fn url() -> String {
    std::env::var("DISPATCH_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "DISPATCH_TEST_POSTGRES is not set: run ./scripts/test, or \
             ./scripts/with-postgres cargo test -p dispatch-store-postgres, or set it to the \
             postgres:// URL of a server where the tests may create schemas"
        )
    })
}

/// A schema name no other test (of this or another process) uses.
fn fresh_schema() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "t_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Its connections are named after the schema, so that a test can find
/// them in `pg_stat_activity` among those of the tests running beside it.
fn open(schema: &str, durability: Durability) -> PgStore {
    let url = url();
    let sep = if url.contains('?') { '&' } else { '?' };
    PgStore::connect_with(
        &format!("{url}{sep}application_name={schema}"),
        PgOptions {
            durability,
            schema: Some(schema.to_owned()),
            ..PgOptions::default()
        },
    )
    .expect("connect to the test PostgreSQL")
}

/// A store in a fresh schema, dropped with the store.
fn fresh() -> PgStore {
    let mut store = open(&fresh_schema(), Durability::Durable);
    store.drop_schema = true;
    store
}

dispatch_store::store_conformance_tests!(fresh());

async fn sql(client: &mut Client, sql: &str) -> Result<(), StoreError> {
    client.batch_execute(sql).await.map_err(pg_error(sql))
}

fn all(store: &impl Store) -> Vec<TaskRecord> {
    store
        .list_tasks(&TaskQuery {
            limit: usize::MAX,
            ..TaskQuery::default()
        })
        .expect("list_tasks")
}

#[test]
fn a_killed_writer_connection_is_replaced_on_the_next_call() {
    let store = fresh();
    let admin = open(
        store.options.schema.as_deref().expect("schema"),
        Durability::Durable,
    );
    store
        .apply(&[Write::Insert(vec![sample(1, "email")])])
        .expect("insert");
    let pid_of = |s: &PgStore| -> i32 {
        s.on_writer(async |c| {
            c.query_one("SELECT pg_backend_pid()", &[])
                .await
                .map_err(pg_error("pid"))?
                .try_get(0)
                .map_err(pg_error("pid"))
        })
        .expect("pid")
    };
    let before = pid_of(&store);
    let killed: bool = admin
        .on_reader(async |c| {
            c.query_one("SELECT pg_terminate_backend($1)", &[&before])
                .await
                .map_err(pg_error("terminate"))?
                .try_get(0)
                .map_err(pg_error("terminate"))
        })
        .expect("terminate the writer's backend");
    assert!(killed);
    // The loss shows as Unavailable on the call that meets it, or not at
    // all when the connection was already seen closed; the next call
    // succeeds on a fresh connection either way.
    let mut stored = false;
    for id in 2..=3 {
        match store.apply(&[Write::Insert(vec![sample(id, "email")])]) {
            Ok(_) => {
                stored = true;
                break;
            }
            Err(e) => assert_eq!(e.kind, ErrorKind::Unavailable, "{e}"),
        }
    }
    assert!(stored, "the store did not reconnect");
    assert_ne!(pid_of(&store), before, "a new connection");
    assert_eq!(all(&store).len(), 2);

    // Reads heal the same way: kill every connection of the store's.
    let schema = store.options.schema.clone().expect("schema");
    admin
        .on_reader(async |c| {
            c.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = $1 AND pid <> pg_backend_pid()",
                &[&schema],
            )
            .await
            .map_err(pg_error("terminate"))
        })
        .expect("terminate");
    let mut reads = 0;
    for _ in 0..(crate::READ_CONNECTIONS * 2 + 2) {
        match store.get_task(TaskId(1)) {
            Ok(t) => {
                assert!(t.is_some());
                reads += 1;
            }
            Err(e) => assert_eq!(e.kind, ErrorKind::Unavailable, "{e}"),
        }
    }
    assert!(reads >= crate::READ_CONNECTIONS, "reads did not heal");
    assert!(store.get_task(TaskId(1)).expect("get").is_some());
}

#[test]
fn a_refused_connection_is_unavailable() {
    // Port 1 on loopback: nothing listens there.
    let err = PgStore::connect("postgres://postgres@127.0.0.1:1/postgres")
        .expect_err("nothing listens there");
    assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_serves_spawn_blocking_threads_of_another_runtime() {
    let store = Arc::new(tokio::task::spawn_blocking(fresh).await.expect("open"));
    let handles: Vec<_> = (0..4u64)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::task::spawn_blocking(move || {
                store
                    .apply(&[Write::Insert(vec![sample(i + 1, "email")])])
                    .expect("insert");
                store.get_task(TaskId(i + 1)).expect("get").expect("stored")
            })
        })
        .collect();
    for h in handles {
        h.await.expect("a blocking thread");
    }
    let schema = store.options.schema.clone().expect("schema");
    // Dropped in an async context, a store must not panic.
    let other = tokio::task::spawn_blocking(move || {
        let other = open(&schema, Durability::Relaxed);
        assert_eq!(other.load_live().expect("load_live").len(), 4);
        other
    })
    .await
    .expect("open");
    drop(other);
    tokio::task::spawn_blocking(move || drop(store))
        .await
        .expect("drop");
}

#[test]
fn durability_sets_synchronous_commit() {
    for (durability, expected) in [(Durability::Durable, "on"), (Durability::Relaxed, "off")] {
        let mut store = open(&fresh_schema(), durability);
        store.drop_schema = true;
        let got: String = store
            .on_writer(async |c| {
                c.query_one("SHOW synchronous_commit", &[])
                    .await
                    .map_err(pg_error("show"))?
                    .try_get(0)
                    .map_err(pg_error("show"))
            })
            .expect("show");
        assert_eq!(got, expected, "{durability:?}");
    }
}

#[test]
fn replicas_opening_one_new_schema_at_once_migrate_it_once() {
    let schema = fresh_schema();
    let barrier = Arc::new(Barrier::new(4));
    let stores: Vec<PgStore> = (0..4)
        .map(|_| {
            let (schema, barrier) = (schema.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                open(&schema, Durability::Durable)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("open"))
        .collect();
    let versions: Vec<i32> = stores[0]
        .on_reader(async |c| {
            let rows = c
                .query(
                    "SELECT version FROM schema_migrations ORDER BY version",
                    &[],
                )
                .await
                .map_err(pg_error("versions"))?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
        .expect("versions");
    assert_eq!(
        versions,
        (1..=crate::schema::VERSION as i32).collect::<Vec<_>>()
    );
    let mut stores = stores;
    stores[0].drop_schema = true;
}

#[test]
fn a_schema_from_a_newer_version_is_refused() {
    let store = fresh();
    let schema = store.options.schema.clone().expect("schema");
    store
        .on_writer(async |c| sql(c, "INSERT INTO schema_migrations (version) VALUES (9999)").await)
        .expect("bump");
    let err = PgStore::connect_with(
        &url(),
        PgOptions {
            schema: Some(schema),
            ..PgOptions::default()
        },
    )
    .expect_err("a newer schema");
    assert_eq!(err.kind, ErrorKind::Corrupt, "{err}");
}

#[test]
fn group_commit_batch_is_all_stored() {
    let store = Arc::new(fresh());
    let (writer, thread) = GroupCommitWriter::start(Arc::clone(&store));
    let replies: Vec<_> = (1..=1_000u64)
        .map(|id| {
            let mut r = sample(id, "email");
            r.body.payload = format!(r#"{{"n":{id}}}"#).into();
            if id % 3 == 0 {
                r.body.idempotency_key = Some(format!("k{id}"));
            }
            writer
                .write(Write::Insert(vec![r]))
                .expect("writer running")
        })
        .collect();
    for reply in replies {
        let outcome = reply.blocking_recv().expect("a reply").expect("committed");
        assert_eq!(
            outcome,
            WriteOutcome::Inserted(vec![InsertOutcome::Created])
        );
    }
    drop(writer);
    thread.join().expect("the writer thread ends cleanly");
    let stored = all(&store);
    assert_eq!(stored.len(), 1_000);
    for r in &stored {
        assert_eq!(&*r.body.payload, format!(r#"{{"n":{}}}"#, r.id));
    }
}

/// Two handles (two replicas) on one database: two connections really
/// race, unlike one handle whose writer takes batches in turn.
fn two_handles() -> (Arc<PgStore>, Arc<PgStore>) {
    let first = fresh();
    let second = open(
        first.options.schema.as_deref().expect("schema"),
        Durability::Durable,
    );
    (Arc::new(first), Arc::new(second))
}

#[test]
fn a_fire_raced_by_two_replicas_has_one_task_and_both_batches_commit() {
    let (a, b) = two_handles();
    a.apply(&[Write::UpsertSchedule(sample_schedule("nightly"))])
        .expect("schedule");
    for round in 0..20u64 {
        let fire_at = 1_800_000_000_000 + round * 60_000;
        let barrier = Arc::new(Barrier::new(2));
        let racers: Vec<_> = [(Arc::clone(&a), 0u64), (Arc::clone(&b), 1)]
            .into_iter()
            .map(|(store, side)| {
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    let base = 1_000 + round * 10 + side * 2;
                    let mut task = sample(base, "report");
                    task.body.idempotency_key = Some(format!("schedule:nightly:{fire_at}"));
                    let batch = [
                        Write::Insert(vec![sample(base + 1, "email")]),
                        Write::Fire {
                            schedule: "nightly".into(),
                            fire_at,
                            task,
                        },
                        Write::SetQueuePaused {
                            name: format!("q{side}"),
                            paused: round % 2 == 0,
                        },
                    ];
                    barrier.wait();
                    store.apply(&batch).expect("a fire race loses no batch")
                })
            })
            .collect();
        let outs: Vec<Vec<WriteOutcome>> = racers
            .into_iter()
            .map(|t| t.join().expect("racer"))
            .collect();
        let fires: Vec<FireOutcome> = outs
            .iter()
            .map(|o| match o[1] {
                WriteOutcome::Fired(f) => f,
                ref other => panic!("{other:?}"),
            })
            .collect();
        let winners: Vec<usize> = (0..2)
            .filter(|&i| fires[i] == FireOutcome::Created)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {fires:?}");
        let winner_id = TaskId(1_000 + round * 10 + winners[0] as u64 * 2);
        assert_eq!(fires[1 - winners[0]], FireOutcome::Existing(winner_id));
        for side in 0..2u64 {
            let other = TaskId(1_000 + round * 10 + side * 2 + 1);
            assert!(a.get_task(other).expect("get").is_some(), "round {round}");
        }
    }
    let fired = all(&*a)
        .iter()
        .filter(|t| &*t.spec.kind == "report")
        .count();
    assert_eq!(fired, 20);
}

#[test]
fn a_takeover_fences_the_old_leaders_batches_from_another_handle() {
    let (a, b) = two_handles();
    let ra = Replica {
        id: "a".into(),
        url: "http://a.invalid".into(),
    };
    let rb = Replica {
        id: "b".into(),
        url: "http://b.invalid".into(),
    };
    let lease = a.claim_lease("default", &ra, 60_000).expect("claim");
    assert!(lease.held);
    a.apply(&[
        Write::Fence {
            partition: "default".into(),
            epoch: lease.epoch,
        },
        Write::Insert(vec![sample(1, "email")]),
    ])
    .expect("the leader writes");
    assert!(!b.claim_lease("default", &rb, 60_000).expect("claim").held);
    // The leader's last renewal is short, and runs out.
    let renewed = a.claim_lease("default", &ra, 1).expect("renew");
    assert_eq!(renewed.epoch, lease.epoch);
    std::thread::sleep(std::time::Duration::from_millis(50));
    let taken = b.claim_lease("default", &rb, 60_000).expect("claim");
    assert!(taken.held);
    assert_eq!(taken.epoch, lease.epoch + 1);
    let err = a
        .apply(&[
            Write::Fence {
                partition: "default".into(),
                epoch: lease.epoch,
            },
            Write::Update(TaskUpdate {
                id: TaskId(1),
                state: TaskState::Cancelled,
                attempts: 0,
                worker: None,
                started_at: None,
                finished_at: Some(5),
                run_at: None,
                result: None,
                error: None,
                attempt: None,
            }),
        ])
        .expect_err("fenced");
    assert_eq!(err.kind, ErrorKind::Fenced);
    assert_eq!(
        b.get_task(TaskId(1)).expect("get").map(|t| t.state),
        Some(TaskState::Queued)
    );
    // The old leader's claim names the new one.
    let seen = a.claim_lease("default", &ra, 60_000).expect("claim");
    assert!(!seen.held);
    assert_eq!((seen.holder.as_str(), seen.epoch), ("b", taken.epoch));
}

#[test]
fn two_replicas_reserve_disjoint_ranges() {
    let (a, b) = two_handles();
    // `a` drops the schema: it must outlive every thread.
    let threads: Vec<_> = [Arc::clone(&a), b]
        .into_iter()
        .flat_map(|s| [Arc::clone(&s), s])
        .map(|store| {
            std::thread::spawn(move || {
                (0..50)
                    .map(|_| store.reserve_ids(10).expect("reserve").0)
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut starts: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("thread"))
        .collect();
    starts.sort_unstable();
    assert_eq!(starts.len(), 200);
    for pair in starts.windows(2) {
        assert!(pair[1] >= pair[0] + 10, "ranges overlap: {pair:?}");
    }
}

#[test]
fn damaged_rows_are_corrupt_not_a_panic() {
    let store = fresh();
    let records: Vec<TaskRecord> = (1..=5u64).map(|id| sample(id, "email")).collect();
    store.apply(&[Write::Insert(records)]).expect("insert");
    for (id, damage) in [
        (1, "UPDATE tasks SET state = 'exploded' WHERE id = 1"),
        (2, "UPDATE tasks SET labels = '[1]' WHERE id = 2"),
        (3, "UPDATE tasks SET depends_on = '{-1}' WHERE id = 3"),
        (4, "UPDATE tasks SET priority = 1000 WHERE id = 4"),
        (5, "UPDATE tasks SET created_at = -5 WHERE id = 5"),
    ] {
        store
            .on_writer(async |c| sql(c, damage).await)
            .expect("damage");
        let err = store.get_task(TaskId(id)).expect_err(damage);
        assert_eq!(err.kind, ErrorKind::Corrupt, "{damage}: {err}");
    }
    let err = store.load_live().expect_err("load_live over damaged rows");
    assert_eq!(err.kind, ErrorKind::Corrupt);
}

/// A PostgreSQL server of the test's own, started by the test script's
/// functions, that the test may restart; stopped when dropped.
struct OwnServer {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    url: String,
}

impl OwnServer {
    fn start() -> OwnServer {
        use std::io::BufRead;
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/postgres-test-cluster.sh"
        );
        let mut child = std::process::Command::new("bash")
            .args(["-c", ". \"$0\" && serve_test_postgres", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("bash");
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let url = lines
            .next()
            .and_then(Result::ok)
            .expect("the test PostgreSQL did not start (see above)");
        OwnServer { child, lines, url }
    }

    fn restart(&mut self) {
        use std::io::Write as _;
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "restart").expect("ask for a restart");
        let answer = self.lines.next().and_then(Result::ok);
        assert_eq!(answer.as_deref(), Some("restarted"));
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        // Closing stdin ends the loop; the script's trap stops the server.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

#[test]
fn a_postgres_restart_under_load_heals_without_reopening_the_store() {
    let mut server = OwnServer::start();
    let store = Arc::new(PgStore::connect(&server.url).expect("connect"));
    let acked = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let failures = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, acked, failures, stop) = (
            Arc::clone(&store),
            Arc::clone(&acked),
            Arc::clone(&failures),
            Arc::clone(&stop),
        );
        std::thread::spawn(move || {
            let mut id = 0;
            while !stop.load(Ordering::SeqCst) {
                id += 1;
                match store.apply(&[Write::Insert(vec![sample(id, "email")])]) {
                    Ok(_) => acked.lock().expect("acked").push(id),
                    Err(e) => {
                        assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
                        failures.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                }
            }
        })
    };
    let acked_count = || acked.lock().expect("acked").len();
    let wait_for = |n: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while acked_count() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "writes stalled at {}",
                acked_count()
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };
    wait_for(50);
    server.restart();
    let after = acked_count();
    wait_for(after + 50);
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("the writer thread");
    // Reads heal too, and every acknowledged write is there.
    let mut stored = None;
    for _ in 0..(crate::READ_CONNECTIONS + 2) {
        if let Ok(all) = store.list_tasks(&TaskQuery {
            limit: usize::MAX,
            ..TaskQuery::default()
        }) {
            stored = Some(all);
            break;
        }
    }
    let stored: std::collections::HashSet<u64> =
        stored.expect("reads heal").iter().map(|t| t.id.0).collect();
    let acked = acked.lock().expect("acked");
    assert!(acked.iter().all(|id| stored.contains(id)));
    eprintln!(
        "{} writes acknowledged, {} failed as Unavailable during the restart",
        acked.len(),
        failures.load(Ordering::SeqCst)
    );
}

/// The server reserves ids from its async handlers (once per range): the
/// store blocks the task for the call, but does not panic, even on a
/// runtime of one thread.
#[tokio::test(flavor = "current_thread")]
async fn it_serves_an_async_task_directly() {
    let store = fresh();
    let first = store.reserve_ids(10).expect("reserve");
    store
        .apply(&[Write::Insert(vec![sample(first.0, "email")])])
        .expect("insert");
    assert!(store.get_task(first).expect("get").is_some());
    tokio::task::spawn_blocking(move || drop(store))
        .await
        .expect("drop");
}

/// A leader writing fenced batches without pause while a standby takes
/// the lease over: every batch of the old term that commits does so
/// before the takeover, none after (the takeover waits for the batch in
/// progress; later ones see the new epoch).
#[test]
fn no_batch_of_the_old_term_commits_after_a_takeover() {
    let (a, b) = two_handles();
    let ra = Replica {
        id: "a".into(),
        url: "http://a.invalid".into(),
    };
    let rb = Replica {
        id: "b".into(),
        url: "http://b.invalid".into(),
    };
    let lease = a.claim_lease("default", &ra, 200).expect("claim");
    assert!(lease.held);
    let leader = {
        let a = Arc::clone(&a);
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            for id in 1u64.. {
                let batch = [
                    Write::Fence {
                        partition: "default".into(),
                        epoch: lease.epoch,
                    },
                    Write::Insert(vec![sample(id, "email")]),
                ];
                match a.apply(&batch) {
                    Ok(_) => acked.push(id),
                    Err(e) => {
                        assert_eq!(e.kind, ErrorKind::Fenced, "{e}");
                        return acked;
                    }
                }
            }
            unreachable!()
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let taken = loop {
        let l = b.claim_lease("default", &rb, 60_000).expect("claim");
        if l.held {
            break l;
        }
        assert!(std::time::Instant::now() < deadline, "never taken over");
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(taken.epoch, lease.epoch + 1);
    let at_takeover = b.max_task_id().expect("max").map_or(0, |t| t.0);
    let acked = leader.join().expect("the old leader");
    assert!(
        !acked.is_empty(),
        "the old leader wrote before the takeover"
    );
    assert_eq!(acked.last().copied(), Some(at_takeover), "nothing after");
    assert_eq!(all(&*b).len(), acked.len());
}
