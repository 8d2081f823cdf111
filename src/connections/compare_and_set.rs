//! The rotation as one statement (PostgreSQL): the row's update, compared against the
//! state version the rotation was worked out from, and the audit event, the outbox rows
//! and the retired digests inserted from it, in one round trip and one implicit
//! transaction, instead of seven statements under an explicit one.
//!
//! CAUTION: this relies on every write of a connection row bumping `state_version`
//! (rotation, re-point, the lifetime policy; a delete removes the row). The update
//! matches only the version the plan was worked out from, so a plan made from a row
//! that has changed since writes nothing, and the caller takes the row lock instead.
//! The update holds the row lock for the statement, which PostgreSQL re-checks against
//! the newest version of the row after waiting for it, so versions stay gap-free.
use std::fmt::Write as _;

use entity::{connection, outbox, retired_digest};
use sea_orm::sea_query::{
    Alias, Expr, InsertStatement, OnConflict, PostgresQueryBuilder, Query, QueryBuilder as _,
    SqlWriterValues, ValueTuple,
};
use sea_orm::{
    ActiveModelTrait, ColumnTrait as _, ConnectionTrait as _, DatabaseConnection, DbBackend, DbErr,
    EntityName as _, EntityTrait, IdenStatic as _, Iterable as _, QueryFilter as _,
    QueryTrait as _, Statement,
};

use super::plan::Plan;
use super::retired;

/// The common table expression of the update; every insert reads it.
const UPDATED: &str = "updated";

/// Writes `plan` if the row still has `expected_state_version`; `false` (and nothing
/// written) when it has not, or is gone.
pub(super) async fn apply(
    db: &DatabaseConnection,
    expected_state_version: i64,
    plan: &Plan,
) -> Result<bool, DbErr> {
    let statement = statement(expected_state_version, plan)?;
    Ok(db.query_one_raw(statement).await?.is_some())
}

/// `WITH updated AS (UPDATE … RETURNING id), event AS (INSERT … SELECT … WHERE EXISTS
/// (SELECT FROM updated)), … SELECT id FROM updated`. Its text depends only on how many
/// digests retire, so PostgreSQL keeps a handful of prepared forms of it.
fn statement(expected_state_version: i64, plan: &Plan) -> Result<Statement, DbErr> {
    let mut update = connection::Entity::update_many();
    for (column, value) in plan.rotated_values() {
        update = update.col_expr(column, Expr::value(value));
    }
    let update = update
        .filter(connection::Column::Id.eq(plan.updated.id))
        .filter(connection::Column::ClientId.eq(plan.updated.client_id))
        .filter(connection::Column::StateVersion.eq(expected_state_version))
        .into_query()
        .returning_col(connection::Column::Id)
        .to_owned();

    let mut inserts = vec![
        (
            "event",
            if_updated(std::slice::from_ref(&plan.event), None)?,
        ),
        (
            "outbox",
            if_updated::<outbox::ActiveModel>(&plan.outbox, None)?,
        ),
    ];
    if !plan.retired.is_empty() {
        inserts.push((
            "retired",
            if_updated::<retired_digest::ActiveModel>(
                &plan.retired,
                Some(retired::keep_earlier_end()),
            )?,
        ));
    }

    let mut sql = SqlWriterValues::new("$", true);
    let written = (|| -> std::fmt::Result {
        write!(sql, "WITH \"{UPDATED}\" AS (")?;
        PostgresQueryBuilder.prepare_update_statement(&update, &mut sql);
        for (name, insert) in &inserts {
            write!(sql, "), \"{name}\" AS (")?;
            PostgresQueryBuilder.prepare_insert_statement(insert, &mut sql);
        }
        write!(sql, ") SELECT \"id\" FROM \"{UPDATED}\"")
    })();
    written.map_err(|e| DbErr::Custom(format!("writing the rotation statement: {e}")))?;
    let (sql, values) = sql.into_parts();
    Ok(Statement::from_sql_and_values(
        DbBackend::Postgres,
        sql,
        values,
    ))
}

/// `INSERT INTO <table> (<every column>) SELECT … FROM (VALUES …) WHERE EXISTS
/// (SELECT FROM updated)`, with `on_conflict` when given.
fn if_updated<A>(rows: &[A], on_conflict: Option<OnConflict>) -> Result<InsertStatement, DbErr>
where
    A: ActiveModelTrait,
{
    let columns: Vec<_> = <A::Entity as EntityTrait>::Column::iter().collect();
    let tuples = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|column| {
                    row.get(*column).into_value().ok_or_else(|| {
                        DbErr::Custom(format!("rotation row without {}", column.as_str()))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(ValueTuple::Many)
        })
        .collect::<Result<Vec<_>, _>>()?;
    // PostgreSQL names a VALUES list's columns column1, column2, …
    let rows = Query::select()
        .columns((1..=columns.len()).map(|i| Alias::new(format!("column{i}"))))
        .from_values(tuples, Alias::new("row"))
        .and_where(Expr::exists(
            Query::select()
                .expr(Expr::val(1))
                .from(Alias::new(UPDATED))
                .to_owned(),
        ))
        .to_owned();
    let mut insert = Query::insert()
        .into_table(A::Entity::default().table_ref())
        .columns(columns)
        .select_from(rows)
        .map_err(|e| DbErr::Custom(format!("rotation insert: {e}")))?
        .to_owned();
    if let Some(on_conflict) = on_conflict {
        insert.on_conflict(on_conflict);
    }
    Ok(insert)
}
