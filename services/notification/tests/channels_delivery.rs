//! The delivery channels under load and failure, driven without a broker:
//! notifications are stored with the consumer's own statement and handed to
//! `deliver_new` (first attempts), or written as due queue rows for the retry
//! loop, against local receivers (an HTTP server, a minimal SMTP server) and
//! the real Postgres of the test stack. Every test has its own AMQP prefix,
//! so its own share of the delivery queue, and fresh users.
//!
//! Needs `PAYFLOW_TEST_DATABASE_URL` (`eval "$(bash scripts/stack.sh env test)"`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use clap::Parser;
use payflow_common::config::JwtClaimArgs;
use payflow_common::ids::UserId;
use payflow_common::jwt::JwtSigner;
use payflow_notification::channels::smtp::{EmailDirectory, SmtpChannel};
use payflow_notification::channels::webhook::WebhookChannel;
use payflow_notification::channels::{self, log::LogChannel, retry, Channels, DeliveryChannel};
use payflow_notification::events::{NewNotification, NotificationType};
use payflow_notification::store::{self, EventToStore, Notification, Recorded};
use payflow_notification::{AppState, Config};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Span;
use uuid::Uuid;

const SECRET: &str = "test-webhook-secret-0123456789";

/// Longest any condition is waited for.
const DEADLINE: Duration = Duration::from_secs(20);

fn database_url() -> String {
    std::env::var("PAYFLOW_TEST_DATABASE_URL")
        .expect("PAYFLOW_TEST_DATABASE_URL is not set: eval \"$(bash scripts/stack.sh env test)\"")
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    cfg: Config,
}

/// A service state of its own (a fresh AMQP prefix) on the test database,
/// configured by `flags` (`name`, `value`).
async fn state(flags: &[(&str, String)]) -> AppState {
    payflow_common::telemetry::init();
    let argv = ["test".to_string(), format!("--database-url={}", database_url()), "--db-max-connections=10".into()]
        .into_iter()
        .chain(std::iter::once(format!("--amqp-prefix=test-{}", Uuid::new_v4().simple())))
        .chain(flags.iter().map(|(k, v)| format!("--{k}={v}")))
        .collect::<Vec<_>>();
    let cfg = Cli::try_parse_from(argv).expect("valid test configuration").cfg;
    let pool = payflow_common::db::connect(&cfg.db, "notification").await.expect("connect to the test database");
    payflow_notification::migrate(&pool).await.expect("notify migrations");
    let verifier = JwtSigner::generate().expect("key").verifier(&JwtClaimArgs::default());
    AppState::with_parts(&cfg, pool, verifier).expect("state")
}

/// Retry quickly: the first retry 20 ms after a failure.
fn retry_flags(attempts: u32) -> Vec<(&'static str, String)> {
    vec![("notification-delivery-attempts", attempts.to_string()), ("notification-retry-delay-ms", "20".into())]
}

fn webhook_flags(url: &str, concurrency: usize) -> Vec<(&'static str, String)> {
    vec![
        ("webhook-url", url.to_string()),
        ("webhook-secret", SECRET.to_string()),
        ("webhook-concurrency", concurrency.to_string()),
        // Longer than any test: a held call stays held.
        ("webhook-timeout-ms", "60000".to_string()),
    ]
}

/// Polls `check` every 10 ms until it yields a value, failing after `within`.
async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Stores `count` notifications (one message, fresh users) as the consumer
/// does: queued for the state's queued channels and leased to this process,
/// ready for `deliver_new`.
async fn store_new(state: &AppState, count: usize) -> Vec<(Notification, String, Span)> {
    let message_id = Uuid::new_v4();
    let notes: Vec<(Uuid, NewNotification)> = (0..count)
        .map(|_| {
            let n = NewNotification {
                user_id: UserId::new(),
                kind: NotificationType::Welcome,
                message: "Welcome to PayFlow".into(),
                transaction_id: None,
                occurred_at: None,
            };
            (message_id, n)
        })
        .collect();
    let correlation_id = format!("corr-{message_id}");
    let event = EventToStore {
        message_id,
        kind: "transaction.completed",
        correlation_id: &correlation_id,
        notifications: &notes,
    };
    let recorded = store::record_events(&state.pool, &[event], &state.queue()).await.expect("store");
    let Some(Recorded::Stored(stored)) = recorded.into_iter().next() else {
        panic!("nothing stored");
    };
    assert_eq!(stored.len(), count);
    stored.into_iter().map(|n| (n, correlation_id.clone(), Span::none())).collect()
}

/// Queues `count` notifications (fresh users) for `channel`, due `ago` in the
/// past with one failed attempt behind them: work for the retry loop.
async fn queue_due(state: &AppState, channel: &str, count: usize, ago: Duration) -> Vec<Uuid> {
    let ids: Vec<Uuid> = (0..count).map(|_| Uuid::now_v7()).collect();
    let users: Vec<Uuid> = (0..count).map(|_| Uuid::new_v4()).collect();
    sqlx::query(
        "WITH n AS (INSERT INTO notify.notifications (id, event_id, user_id, type, message) \
                    SELECT id, id, user_id, 'WELCOME', 'Welcome to PayFlow' \
                    FROM UNNEST($1::uuid[], $2::uuid[]) AS u(id, user_id) RETURNING id) \
         INSERT INTO notify.delivery_queue \
             (notification_id, channel, prefix, attempts, next_attempt_at, correlation_id) \
         SELECT id, $3, $4, 1, now() - make_interval(secs => $5), 'corr-retry' FROM n",
    )
    .bind(&ids)
    .bind(&users)
    .bind(channel)
    .bind(&*state.prefix)
    .bind(ago.as_secs_f64())
    .execute(&state.pool)
    .await
    .expect("queue due deliveries");
    ids
}

/// A queue row: `(attempts, given up, last error)`; `None` once delivered.
async fn queue_row(state: &AppState, id: Uuid, channel: &str) -> Option<(i32, bool, Option<String>)> {
    sqlx::query_as(
        "SELECT attempts, gave_up_at IS NOT NULL, last_error FROM notify.delivery_queue \
         WHERE notification_id = $1 AND channel = $2",
    )
    .bind(id)
    .bind(channel)
    .fetch_optional(&state.pool)
    .await
    .expect("queue row")
}

/// How many of `ids` still have a queue row for `channel`.
async fn still_queued(state: &AppState, ids: &[Uuid], channel: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM notify.delivery_queue WHERE notification_id = ANY($1) AND channel = $2")
        .bind(ids)
        .bind(channel)
        .fetch_one(&state.pool)
        .await
        .expect("count")
}

/// The recorded attempts of one notification: `(channel, result, error)`.
async fn deliveries(state: &AppState, id: Uuid) -> Vec<(String, String, Option<String>)> {
    sqlx::query_as(
        "SELECT channel, result, error FROM notify.deliveries WHERE notification_id = $1 ORDER BY channel, id",
    )
    .bind(id)
    .fetch_all(&state.pool)
    .await
    .expect("deliveries")
}

/// Runs the retry loop of `state` until the returned token is cancelled.
fn start_retries(state: &AppState) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let cancel = CancellationToken::new();
    (cancel.clone(), tokio::spawn(retry::run(state.clone(), cancel)))
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn notification_id(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body).expect("json")["id"].as_str().expect("an id").to_string()
}

/// A webhook receiver that holds every call until the test releases it (one
/// permit of `release` per call), counting the calls under way.
struct Held {
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    /// Calls that arrived so far.
    arrived: watch::Sender<usize>,
    release: Semaphore,
    calls: Mutex<HashMap<String, usize>>,
}

impl Held {
    async fn start() -> (String, Arc<Held>) {
        let held = Arc::new(Held {
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
            arrived: watch::channel(0).0,
            release: Semaphore::new(0),
            calls: Mutex::new(HashMap::new()),
        });
        let app = Router::new().route("/hook", post(Self::call)).with_state(held.clone());
        (serve(app).await, held)
    }

    async fn call(State(held): State<Arc<Held>>, body: Bytes) -> StatusCode {
        *held.calls.lock().unwrap().entry(notification_id(&body)).or_default() += 1;
        let now = held.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        held.most_in_flight.fetch_max(now, Ordering::SeqCst);
        held.arrived.send_modify(|n| *n += 1);
        if let Ok(permit) = held.release.acquire().await {
            permit.forget();
        }
        // Before the answer: the caller's next call cannot arrive before this.
        held.in_flight.fetch_sub(1, Ordering::SeqCst);
        StatusCode::NO_CONTENT
    }

    /// Waits until at least `n` calls arrived.
    async fn wait_for_arrivals(&self, n: usize) {
        let mut arrived = self.arrived.subscribe();
        let reached = tokio::time::timeout(DEADLINE, arrived.wait_for(|a| *a >= n)).await;
        assert!(reached.is_ok(), "timed out waiting for {n} webhook calls ({} arrived)", *self.arrived.borrow());
    }
}

#[tokio::test]
async fn webhook_calls_under_way_stay_within_the_channel_bound_across_batches_and_retries() {
    const BOUND: usize = 8;
    let (url, held) = Held::start().await;
    let flags = [webhook_flags(&url, BOUND), retry_flags(5)].concat();
    let state = state(&flags).await;
    // Two consumer batches of 100 (each would have had all its calls under way
    // at once) and 40 retries, all through the one webhook.
    let mut first_attempts = Vec::new();
    let mut first_ids = Vec::new();
    for _ in 0..2 {
        let batch = store_new(&state, 100).await;
        first_ids.extend(batch.iter().map(|(n, ..)| n.id));
        let state = state.clone();
        first_attempts.push(tokio::spawn(async move { channels::deliver_new(&state, &batch).await }));
    }
    let retry_ids = queue_due(&state, "webhook", 40, Duration::from_secs(1)).await;
    let (cancel, retries) = start_retries(&state);
    let total = first_ids.len() + retry_ids.len();

    // Let the calls through BOUND at a time, each time only once BOUND are held:
    // every call is made, and never more than BOUND at once.
    let mut released = 0;
    while released < total {
        held.wait_for_arrivals((released + BOUND).min(total)).await;
        held.release.add_permits(BOUND);
        released += BOUND;
    }
    for task in first_attempts {
        tokio::time::timeout(DEADLINE, task).await.expect("first attempts end").expect("first attempts task");
    }
    let all: Vec<Uuid> = first_ids.iter().chain(&retry_ids).copied().collect();
    eventually("every delivery recorded", DEADLINE, || async {
        (still_queued(&state, &all, "webhook").await == 0).then_some(())
    })
    .await;
    assert_eq!(held.most_in_flight.load(Ordering::SeqCst), BOUND, "the bound is used, never passed");
    let calls = held.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), total, "every notification posted");
    assert!(calls.values().all(|n| *n == 1), "each once: {calls:?}");
    for id in [first_ids[0], first_ids[199], retry_ids[39]] {
        let webhook: Vec<_> = deliveries(&state, id).await.into_iter().filter(|d| d.0 == "webhook").collect();
        assert_eq!(webhook, vec![("webhook".to_string(), "ok".to_string(), None)], "{id}");
    }
    assert_eq!(state.counters.deliveries.with_label_values(&["webhook", "ok"]).get(), total as u64);
    assert_eq!(state.counters.deferred.with_label_values(&["webhook"]).get(), 0);
    cancel.cancel();
    tokio::time::timeout(DEADLINE, retries).await.expect("retry loop stops").expect("retry loop task");
}

/// A minimal SMTP server: accepts every mail and reports its
/// `X-PayFlow-Notification-Id`.
async fn smtp_server() -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("smtp://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(smtp_session(socket, tx.clone()));
        }
    });
    (url, rx)
}

async fn smtp_session(socket: tokio::net::TcpStream, mails: tokio::sync::mpsc::UnboundedSender<String>) {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read).lines();
    let _ = write.write_all(b"220 localhost test SMTP\r\n").await;
    let mut in_data = false;
    let mut id = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        let answer: &[u8] = if in_data {
            if let Some(v) = line.strip_prefix("X-PayFlow-Notification-Id: ") {
                id = v.trim().to_string();
            }
            if line != "." {
                continue;
            }
            in_data = false;
            let _ = mails.send(std::mem::take(&mut id));
            b"250 queued\r\n"
        } else {
            match line.get(..4).map(|c| c.to_ascii_uppercase()).as_deref() {
                Some("EHLO") => b"250-localhost\r\n250 8BITMIME\r\n",
                Some("DATA") => {
                    in_data = true;
                    b"354 go ahead\r\n"
                }
                Some("QUIT") => {
                    let _ = write.write_all(b"221 bye\r\n").await;
                    return;
                }
                _ => b"250 ok\r\n",
            }
        };
        if write.write_all(answer).await.is_err() {
            return;
        }
    }
}

/// Every user has this address.
struct Everyone(&'static str);

#[async_trait]
impl EmailDirectory for Everyone {
    async fn email_of(&self, _: UserId) -> anyhow::Result<Option<String>> {
        Ok(Some(self.0.to_string()))
    }
}

#[tokio::test]
async fn a_hanging_webhook_does_not_hold_back_the_retries_of_email() {
    const WEBHOOK_BOUND: usize = 16;
    let (webhook_url, held) = Held::start().await;
    let (smtp_url, mut mails) = smtp_server().await;
    let mut state = state(&retry_flags(5)).await;
    let list: Vec<Arc<dyn DeliveryChannel>> = vec![
        Arc::new(LogChannel),
        Arc::new(WebhookChannel::new(&webhook_url, SECRET, Duration::from_secs(60), WEBHOOK_BOUND).expect("webhook")),
        Arc::new(
            SmtpChannel::new(&smtp_url, "payflow@localhost", Arc::new(Everyone("someone@example.com")), 4)
                .expect("smtp"),
        ),
    ];
    state.channels = Channels::new(list);
    // More webhook retries than one claim takes, due before any e-mail: a
    // single loop would claim only webhook rows and wait on them.
    let webhook_ids = queue_due(&state, "webhook", 60, Duration::from_secs(3600)).await;
    let mail_ids = queue_due(&state, "smtp", 60, Duration::from_secs(1)).await;
    let (cancel, retries) = start_retries(&state);

    // Well within the 30 s a hung webhook call may take.
    let within = Duration::from_secs(10);
    let mut sent = Vec::new();
    while sent.len() < mail_ids.len() {
        match tokio::time::timeout(within, mails.recv()).await {
            Ok(Some(id)) => sent.push(id),
            _ => panic!("only {} of {} e-mails sent while the webhook hangs", sent.len(), mail_ids.len()),
        }
    }
    eventually("the e-mail retries recorded", within, || async {
        (still_queued(&state, &mail_ids, "smtp").await == 0).then_some(())
    })
    .await;
    sent.sort();
    let mut expected: Vec<String> = mail_ids.iter().map(Uuid::to_string).collect();
    expected.sort();
    assert_eq!(sent, expected);
    assert_eq!(deliveries(&state, mail_ids[0]).await, vec![("smtp".to_string(), "ok".to_string(), None)]);
    // The webhook still hangs, with no more calls than its own bound.
    held.wait_for_arrivals(WEBHOOK_BOUND).await;
    assert_eq!(held.in_flight.load(Ordering::SeqCst), WEBHOOK_BOUND);
    assert_eq!(still_queued(&state, &webhook_ids, "webhook").await, 60);

    // Once the receiver answers, its retries go through too.
    held.release.add_permits(webhook_ids.len());
    eventually("the webhook retries recorded", DEADLINE, || async {
        (still_queued(&state, &webhook_ids, "webhook").await == 0).then_some(())
    })
    .await;
    cancel.cancel();
    tokio::time::timeout(DEADLINE, retries).await.expect("retry loop stops").expect("retry loop task");
}

/// A webhook receiver that answers each notification with the status set for
/// it (503 by default) and counts the calls.
struct Answers {
    status: Mutex<HashMap<String, u16>>,
    calls: Mutex<HashMap<String, usize>>,
}

impl Answers {
    async fn start() -> (String, Arc<Answers>) {
        let answers = Arc::new(Answers { status: Mutex::new(HashMap::new()), calls: Mutex::new(HashMap::new()) });
        let app = Router::new().route("/hook", post(Self::call)).with_state(answers.clone());
        (serve(app).await, answers)
    }

    async fn call(State(answers): State<Arc<Answers>>, body: Bytes) -> StatusCode {
        let id = notification_id(&body);
        *answers.calls.lock().unwrap().entry(id.clone()).or_default() += 1;
        let status = answers.status.lock().unwrap().get(&id).copied().unwrap_or(503);
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn calls(&self, id: Uuid) -> usize {
        self.calls.lock().unwrap().get(&id.to_string()).copied().unwrap_or(0)
    }
}

#[tokio::test]
async fn a_webhook_refusal_is_given_up_at_once_and_an_unavailable_receiver_retried() {
    let (url, answers) = Answers::start().await;
    let flags = [webhook_flags(&url, 4), retry_flags(3)].concat();
    let state = state(&flags).await;
    let batch = store_new(&state, 3).await;
    let (refused, unavailable, limited) = (batch[0].0.id, batch[1].0.id, batch[2].0.id);
    answers.status.lock().unwrap().extend([(refused.to_string(), 400), (limited.to_string(), 429)]);
    channels::deliver_new(&state, &batch).await;
    let (cancel, retries) = start_retries(&state);

    // 503 and 429 ask to try later: all three attempts made.
    for id in [unavailable, limited] {
        eventually("given up after the last attempt", DEADLINE, || async {
            queue_row(&state, id, "webhook").await.filter(|r| r.1).map(|r| r.0)
        })
        .await;
        assert_eq!(queue_row(&state, id, "webhook").await.map(|r| r.0), Some(3));
        assert_eq!(answers.calls(id), 3);
    }
    // 400 refuses the notification itself: given up after its first attempt, with the reason.
    let (attempts, gave_up, error) = queue_row(&state, refused, "webhook").await.expect("kept for operators");
    assert_eq!((attempts, gave_up), (1, true));
    let error = error.unwrap_or_default();
    assert!(error.contains("HTTP 400") && error.contains("not retried"), "{error}");
    assert_eq!(answers.calls(refused), 1);
    let results: Vec<String> =
        deliveries(&state, refused).await.into_iter().map(|d| format!("{}:{}", d.0, d.1)).collect();
    assert_eq!(results, vec!["log:ok", "webhook:failed"]);

    let counted = |result: &str| state.counters.deliveries.with_label_values(&["webhook", result]).get();
    assert_eq!(counted(channels::REJECTED), 1);
    assert_eq!(counted("failed"), 6);
    assert_eq!(state.counters.gave_up.with_label_values(&["webhook"]).get(), 3);
    cancel.cancel();
    tokio::time::timeout(DEADLINE, retries).await.expect("retry loop stops").expect("retry loop task");
}

#[tokio::test]
async fn an_unusable_stored_address_is_given_up_at_once() {
    let (smtp_url, mut mails) = smtp_server().await;
    let mut state = state(&retry_flags(3)).await;
    let list: Vec<Arc<dyn DeliveryChannel>> = vec![
        Arc::new(LogChannel),
        Arc::new(
            SmtpChannel::new(&smtp_url, "payflow@localhost", Arc::new(Everyone("not an address")), 4).expect("smtp"),
        ),
    ];
    state.channels = Channels::new(list);
    let batch = store_new(&state, 1).await;
    let id = batch[0].0.id;
    channels::deliver_new(&state, &batch).await;
    let (cancel, retries) = start_retries(&state);

    let (attempts, error) = eventually("given up", DEADLINE, || async {
        queue_row(&state, id, "smtp").await.filter(|r| r.1).map(|r| (r.0, r.2))
    })
    .await;
    assert_eq!(attempts, 1, "not retried");
    let error = error.unwrap_or_default();
    assert!(error.contains("stored address is not usable"), "{error}");
    assert_eq!(state.counters.deliveries.with_label_values(&["smtp", channels::REJECTED]).get(), 1);
    assert_eq!(state.counters.gave_up.with_label_values(&["smtp"]).get(), 1);
    assert!(mails.try_recv().is_err(), "no mail sent");
    cancel.cancel();
    tokio::time::timeout(DEADLINE, retries).await.expect("retry loop stops").expect("retry loop task");
}

#[tokio::test]
async fn stopping_leaves_first_attempts_still_waiting_for_room_to_their_lease() {
    let (url, held) = Held::start().await;
    let flags = [webhook_flags(&url, 1), retry_flags(5)].concat();
    let state = state(&flags).await;
    let batch = store_new(&state, 3).await;
    let ids: Vec<Uuid> = batch.iter().map(|(n, ..)| n.id).collect();
    let (cancel, retries) = start_retries(&state);
    let first_attempts = {
        let state = state.clone();
        tokio::spawn(async move { channels::deliver_new(&state, &batch).await })
    };
    held.wait_for_arrivals(1).await;

    cancel.cancel();
    // The two waiting for the one permit give up at once, not after their
    // 20 s wait; the call under way goes on.
    eventually("the waiting attempts left to their lease", Duration::from_secs(5), || async {
        (state.counters.deferred.with_label_values(&["webhook"]).get() == 2).then_some(())
    })
    .await;
    held.release.add_permits(1);
    tokio::time::timeout(DEADLINE, first_attempts).await.expect("first attempts end").expect("first attempts task");
    tokio::time::timeout(DEADLINE, retries).await.expect("retry loop stops").expect("retry loop task");
    assert_eq!(*held.arrived.borrow(), 1);
    assert_eq!(still_queued(&state, &ids, "webhook").await, 2, "still queued for whoever runs next");
    assert_eq!(state.counters.deliveries.with_label_values(&["webhook", "ok"]).get(), 1);
}
