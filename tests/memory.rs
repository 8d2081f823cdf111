//! What an instance keeps in memory while nobody reads it: verifies driven through the
//! real app with nothing scraping `/metrics` must not grow the heap with their number.
//!
//! A test binary of its own, so its counting allocator sees this one application and
//! nothing else of the suite. Live heap bytes are counted exactly (every allocation
//! minus every free), so the bound holds whatever the machine's speed: no timing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use mithril::Application;
use mithril::config::Config;
use mithril::seed::{self, SeedClient, SeedConnection, SeedFile, SeedUser};
use uuid::Uuid;

/// The system allocator, counting the bytes it holds for the program.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
/// The most `LIVE_BYTES` reached since the last `reset_peak`.
static PEAK_BYTES: AtomicIsize = AtomicIsize::new(0);

/// The tests of this binary run one at a time: each measures the whole process's heap.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn grow(bytes: isize) {
    let live = LIVE_BYTES.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK_BYTES.fetch_max(live, Ordering::Relaxed);
}

fn reset_peak() -> isize {
    let live = live_bytes();
    PEAK_BYTES.store(live, Ordering::Relaxed);
    live
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grow(layout.size() as isize);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grow(layout.size() as isize);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            grow(new_size as isize - layout.size() as isize);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_bytes() -> isize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

/// `callers` keep-alive connections each send `each` verifies of `secret`.
async fn verify_many(address: &str, secret: &str, callers: usize, each: usize) {
    let url = format!("{address}/api/connections/actions/verify");
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let url = url.clone();
        let secret = secret.to_owned();
        tasks.push(actix_web::rt::spawn(async move {
            let http = reqwest::Client::new();
            for _ in 0..each {
                let status = http
                    .post(&url)
                    .header("api-key", &secret)
                    .send()
                    .await
                    .unwrap()
                    .status();
                assert_eq!(status, 200);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// One embedded instance on port 0, on a SQLite database of its own, without workers.
struct Instance {
    address: String,
    db: sea_orm::DatabaseConnection,
    server: actix_web::dev::ServerHandle,
    running: actix_web::rt::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Instance {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::embedded(format!(
            "sqlite://{}/mithril.db?mode=rwc",
            dir.path().display()
        ));
        config.http.bind = "127.0.0.1:0".to_owned();
        config.http.workers = 2;
        config.run_workers = false;
        config.workers.mail_dir = dir.path().join("mail");
        let app = Application::build(config).await.unwrap();
        Self {
            address: format!("http://127.0.0.1:{}", app.port()),
            db: app.db(),
            server: app.handle(),
            running: actix_web::rt::spawn(app.run_until_stopped()),
            _dir: dir,
        }
    }

    async fn stop(self) {
        self.server.stop(true).await;
        self.running.await.unwrap().unwrap();
    }

    /// A clinic owned by a user, connected to a MIS with `secret` (generated when
    /// `None`), and the owner's `token` with read scope when given.
    async fn clinic(&self, secret: Option<String>, token: Option<&str>) -> Clinic {
        let (owner, clinic, mis, connection) = (
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        );
        let client = |id, name: &str, client_type: &str| SeedClient {
            id,
            name: name.to_owned(),
            client_type: client_type.to_owned(),
            user_id: owner,
            is_blocked: false,
        };
        seed::load(
            &self.db,
            SeedFile {
                users: vec![SeedUser {
                    id: owner,
                    email: "owner@clinic.example.org".to_owned(),
                    locale: "uk".to_owned(),
                    is_blocked: false,
                }],
                clients: vec![client(clinic, "Clinic", "MSP"), client(mis, "MIS", "MIS")],
                connections: vec![SeedConnection {
                    id: connection,
                    client_id: clinic,
                    consumer_id: mis,
                    redirect_uri: "https://mis.example.org/cb".to_owned(),
                    secret,
                }],
                tokens: token
                    .map(|value| seed::SeedToken {
                        value: value.to_owned(),
                        user_id: owner,
                        client_id: clinic,
                        scope: "connection:read".to_owned(),
                        expires_at: chrono::Utc::now() + chrono::Duration::hours(1),
                    })
                    .into_iter()
                    .collect(),
            },
        )
        .await
        .unwrap();
        Clinic {
            owner,
            clinic,
            mis,
            connection,
        }
    }
}

struct Clinic {
    owner: Uuid,
    clinic: Uuid,
    mis: Uuid,
    connection: Uuid,
}

#[actix_web::test]
async fn unscraped_metrics_keep_the_heap_flat_however_many_verifies() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let app = Instance::start().await;
    let secret = format!("seeded-{}", Uuid::new_v4().simple());
    app.clinic(Some(secret.clone()), None).await;
    let address = app.address.clone();

    // Warm up: connections, caches, every metric's first sample and label set.
    verify_many(&address, &secret, 4, 1_000).await;
    let before = live_bytes();
    // Each answered request records at least one histogram sample (8 bytes); 24 000
    // of them held until a scrape would be some 200-400 KB (400 KB measured before the
    // fix).
    verify_many(&address, &secret, 4, 6_000).await;
    let grown = live_bytes() - before;
    eprintln!("heap growth over 24 000 unscraped verifies: {grown} bytes");

    app.stop().await;
    assert!(
        grown < 96 * 1024,
        "the heap grew by {grown} bytes over 24 000 unscraped verifies"
    );
}

/// Issue "ten holes", 6: the last page of a long trail costs the memory of one page, not
/// of the trail (the database pages the merge of events and sightings).
#[actix_web::test]
async fn the_last_page_of_a_long_trail_costs_one_page_of_memory() {
    use chrono::{Duration, TimeZone as _, Utc};
    use entity::{connection_event, secret_sighting};
    use sea_orm::{ActiveValue::Set, EntityTrait as _};

    let _alone = ONE_AT_A_TIME.lock().await;
    let app = Instance::start().await;
    let token = format!("token-{}", Uuid::new_v4().simple());
    let Clinic {
        owner,
        clinic,
        mis,
        connection,
    } = app.clinic(None, Some(&token)).await;
    let (address, db) = (app.address.clone(), app.db.clone());

    // 20 000 re-points, one a minute, and a day's sighting every day among them (13).
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let events: Vec<connection_event::ActiveModel> = (0..20_000i64)
        .map(|minute| connection_event::ActiveModel {
            id: Set(Uuid::now_v7()),
            connection_id: Set(connection),
            client_id: Set(clinic),
            kind: Set("updated".to_owned()),
            actor_user_id: Set(owner),
            actor_client_id: Set(clinic),
            request_id: Set(format!("request-{minute}")),
            remote_address: Set(Some("192.0.2.1".to_owned())),
            secret_version: Set(Some(0)),
            grace_period: Set(None),
            secret_expires_at: Set(None),
            occurred_at: Set(start + Duration::minutes(minute)),
        })
        .collect();
    for chunk in events.chunks(1_000) {
        connection_event::Entity::insert_many(chunk.to_vec())
            .exec_without_returning(&db)
            .await
            .unwrap();
    }
    drop(events);
    for day in 0..13i64 {
        let at = start + Duration::days(day) + Duration::seconds(30);
        secret_sighting::Entity::insert(secret_sighting::ActiveModel {
            id: Set(Uuid::now_v7()),
            connection_id: Set(connection),
            client_id: Set(clinic),
            consumer_id: Set(mis),
            day: Set(at.date_naive()),
            reason: Set(secret_sighting::reason::RETIRED.to_owned()),
            count: Set(1),
            first_seen_at: Set(at),
            last_seen_at: Set(at),
            last_address: Set(None),
        })
        .exec_without_returning(&db)
        .await
        .unwrap();
    }

    let http = reqwest::Client::new();
    let page = |number: u64| {
        http.get(format!(
            "{address}/api/clients/{clinic}/connections/{connection}/events?page={number}&page_size=50"
        ))
        .bearer_auth(&token)
        .send()
    };
    // Warm up: connections, the token's cache entry, the first page.
    assert_eq!(page(1).await.unwrap().status(), 200);
    let before = reset_peak();
    // 20 013 entries: the last page holds the 13 oldest (the events of minutes 0..=11
    // and the first day's sighting, at minute 0 plus 30 s).
    let response = page(401).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    let peak = PEAK_BYTES.load(Ordering::Relaxed) - before;
    eprintln!("peak heap above the start while answering the last page: {peak} bytes");

    app.stop().await;
    assert_eq!(body["paging"]["total_entries"], 20_013);
    let entries = body["data"].as_array().unwrap();
    assert_eq!(entries.len(), 13);
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    let mut expected = vec!["updated"; 11];
    expected.extend(["stale_secret_presented", "updated"]);
    assert_eq!(
        kinds, expected,
        "newest first: minutes 11..=1, the sighting, minute 0"
    );
    assert_eq!(entries[12]["request_id"], "request-0");
    assert_eq!(entries[0]["request_id"], "request-11");
    assert!(
        peak < 1024 * 1024,
        "answering one page of a 20 000-event trail took {peak} bytes of heap at its peak"
    );
}
