//! Reads of the connection resource, and the row locks that order its writes.
use entity::{client, connection};
use sea_orm::sea_query::{Condition, Expr, ExprTrait as _, Func};
use sea_orm::{
    ColumnTrait as _, ConnectionTrait, DatabaseBackend, DatabaseConnection, DatabaseTransaction,
    DbErr, EntityTrait as _, PaginatorTrait as _, QueryFilter as _, QueryOrder as _,
    QuerySelect as _,
};
use uuid::Uuid;

use crate::paging::{Page, PageRequest};
use crate::secrets::SecretDigest;

/// Filters of the connection list; both optional.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub consumer_id: Option<Uuid>,
    /// Matches connections whose `redirect_uri` contains this text (case-sensitive).
    pub redirect_uri: Option<String>,
}

pub async fn client_exists(conn: &impl ConnectionTrait, client_id: Uuid) -> Result<bool, DbErr> {
    Ok(client::Entity::find_by_id(client_id).count(conn).await? > 0)
}

/// One page of a client's connections, oldest first (stable under inserts at the end).
pub async fn list(
    db: &DatabaseConnection,
    client_id: Uuid,
    filter: &ListFilter,
    page: PageRequest,
) -> Result<Page<connection::Model>, DbErr> {
    let mut query = connection::Entity::find().filter(connection::Column::ClientId.eq(client_id));
    if let Some(consumer_id) = filter.consumer_id {
        query = query.filter(connection::Column::ConsumerId.eq(consumer_id));
    }
    if let Some(needle) = filter.redirect_uri.as_deref().filter(|n| !n.is_empty()) {
        // A plain substring test, not LIKE: a caller's `%` or `_` means itself, and
        // both backends compare case-sensitively.
        let position = match db.get_database_backend() {
            DatabaseBackend::Postgres => Func::cust("strpos"),
            _ => Func::cust("instr"),
        };
        query = query.filter(
            Expr::expr(
                position
                    .arg(Expr::col(connection::Column::RedirectUri))
                    .arg(needle.to_owned()),
            )
            .gt(0),
        );
    }
    let total = query.clone().count(db).await?;
    let Some(offset) = page.offset_within(total) else {
        return Ok(Page::empty(total));
    };
    let entries = query
        .order_by_asc(connection::Column::InsertedAt)
        .order_by_asc(connection::Column::Id)
        .offset(offset)
        .limit(page.page_size)
        .all(db)
        .await?;
    Ok(Page { entries, total })
}

/// The connection `connection_id` of `client_id`; `None` when it does not exist or
/// belongs to another client.
pub async fn find(
    conn: &impl ConnectionTrait,
    client_id: Uuid,
    connection_id: Uuid,
) -> Result<Option<connection::Model>, DbErr> {
    connection::Entity::find_by_id(connection_id)
        .filter(connection::Column::ClientId.eq(client_id))
        .one(conn)
        .await
}

/// The connection whose current secret, or previous secret, has this digest (whether
/// it still accepts it is `validity::entry_for`'s to say).
pub async fn holding(
    db: &DatabaseConnection,
    digest: &SecretDigest,
) -> Result<Option<connection::Model>, DbErr> {
    connection::Entity::find()
        .filter(
            Condition::any()
                .add(connection::Column::SecretHash.eq(digest.as_str()))
                .add(connection::Column::PreviousSecretHash.eq(digest.as_str())),
        )
        .one(db)
        .await
}

/// Takes the row lock that orders concurrent writes of one connection, and reads the
/// row under it.
pub async fn lock(
    txn: &DatabaseTransaction,
    client_id: Uuid,
    connection_id: Uuid,
) -> Result<Option<connection::Model>, DbErr> {
    let find = connection::Entity::find_by_id(connection_id)
        .filter(connection::Column::ClientId.eq(client_id));
    match txn.get_database_backend() {
        // SQLite has no row locks: a first write takes the database's write lock before
        // anything is read, so a deferred transaction never reads a row it cannot then
        // update (that would fail with SQLITE_BUSY instead of waiting).
        DatabaseBackend::Sqlite => {
            connection::Entity::update_many()
                .col_expr(
                    connection::Column::SecretVersion,
                    Expr::col(connection::Column::SecretVersion),
                )
                .filter(connection::Column::Id.eq(connection_id))
                .exec(txn)
                .await?;
            find.one(txn).await
        }
        _ => find.lock_exclusive().one(txn).await,
    }
}

/// The row of `(client_id, consumer_id)`, locked like `lock` locks by id.
pub async fn lock_pair(
    txn: &DatabaseTransaction,
    client_id: Uuid,
    consumer_id: Uuid,
) -> Result<Option<connection::Model>, DbErr> {
    let find = connection::Entity::find()
        .filter(connection::Column::ClientId.eq(client_id))
        .filter(connection::Column::ConsumerId.eq(consumer_id));
    match txn.get_database_backend() {
        // The failed insert before it already holds SQLite's write lock.
        DatabaseBackend::Sqlite => find.one(txn).await,
        _ => find.lock_exclusive().one(txn).await,
    }
}
