//! The suite's Redis: configured or not, and what it holds.
use uuid::Uuid;

/// The Redis the suite may use, from `MITHRIL_TEST_REDIS_URL` (CI sets it); `None`
/// when unset. Set but unreachable fails.
pub async fn optional_test_redis() -> Option<String> {
    let url = std::env::var("MITHRIL_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())?;
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("MITHRIL_TEST_REDIS_URL is set but unreachable: {e}"));
    let _: () = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    Some(url)
}

/// The Redis a Redis-only test needs. Such tests are `#[ignore]`d in the default run
/// (which needs no services) and run with `--include-ignored` where Redis is configured,
/// as `.ci/run` does; run without it, they fail rather than pass silently.
pub async fn test_redis() -> String {
    optional_test_redis()
        .await
        .expect("this test needs MITHRIL_TEST_REDIS_URL (e.g. redis://127.0.0.1:6379)")
}

/// Every key and value under `pattern`, as text, to search for values that must not
/// be stored.
pub async fn dump_redis(url: &str, pattern: &str) -> String {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut dump = String::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let read = match kind.as_str() {
            "string" => redis::cmd("GET").arg(&key).to_owned(),
            "hash" => redis::cmd("HGETALL").arg(&key).to_owned(),
            "list" => redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).to_owned(),
            "set" => redis::cmd("SMEMBERS").arg(&key).to_owned(),
            "zset" => redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).to_owned(),
            _ => continue,
        };
        // GET answers one value, the others a list of them.
        let values: Vec<Vec<u8>> = if kind == "string" {
            vec![read.query_async(&mut conn).await.unwrap()]
        } else {
            read.query_async(&mut conn).await.unwrap()
        };
        dump.push_str(&key);
        for value in values {
            dump.push(' ');
            dump.push_str(&String::from_utf8_lossy(&value));
        }
        dump.push('\n');
    }
    dump
}

/// A queue namespace no other test shares.
pub fn fresh_namespace() -> String {
    format!("mithril-test-{}", Uuid::new_v4().simple())
}
