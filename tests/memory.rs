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

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
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
            LIVE_BYTES.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
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

#[actix_web::test]
async fn unscraped_metrics_keep_the_heap_flat_however_many_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::embedded(format!(
        "sqlite://{}/mithril.db?mode=rwc",
        dir.path().display()
    ));
    config.bind = "127.0.0.1:0".to_owned();
    config.http_workers = 2;
    config.run_workers = false;
    config.workers.mail_dir = dir.path().join("mail");
    let app = Application::build(config).await.unwrap();
    let address = format!("http://127.0.0.1:{}", app.port());
    let db = app.db();
    let server = app.handle();
    let running = actix_web::rt::spawn(app.run_until_stopped());

    let (owner, clinic, mis) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let secret = format!("seeded-{}", Uuid::new_v4().simple());
    let client = |id, name: &str, client_type: &str| SeedClient {
        id,
        name: name.to_owned(),
        client_type: client_type.to_owned(),
        user_id: owner,
        is_blocked: false,
    };
    seed::load(
        &db,
        SeedFile {
            users: vec![SeedUser {
                id: owner,
                email: "owner@clinic.example.org".to_owned(),
                locale: "uk".to_owned(),
                is_blocked: false,
            }],
            clients: vec![client(clinic, "Clinic", "MSP"), client(mis, "MIS", "MIS")],
            connections: vec![SeedConnection {
                id: Uuid::new_v4(),
                client_id: clinic,
                consumer_id: mis,
                redirect_uri: "https://mis.example.org/cb".to_owned(),
                secret: Some(secret.clone()),
            }],
            ..SeedFile::default()
        },
    )
    .await
    .unwrap();

    // Warm up: connections, caches, every metric's first sample and label set.
    verify_many(&address, &secret, 4, 1_000).await;
    let before = live_bytes();
    // Each answered request records at least one histogram sample (8 bytes); 24 000
    // of them held until a scrape would be some 200-400 KB (400 KB measured before the
    // fix).
    verify_many(&address, &secret, 4, 6_000).await;
    let grown = live_bytes() - before;
    eprintln!("heap growth over 24 000 unscraped verifies: {grown} bytes");

    server.stop(true).await;
    running.await.unwrap().unwrap();
    assert!(
        grown < 96 * 1024,
        "the heap grew by {grown} bytes over 24 000 unscraped verifies"
    );
}
