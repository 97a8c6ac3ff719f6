//! Aliases (`champion`, `challenger`, any name): mutable pointers to a version, with every move
//! kept in an append-only history (triggers in the schema refuse UPDATE and DELETE on it).
//!
//! Rollback undoes moves in reverse order, like an undo stack: replaying the history, a `set` or
//! `delete` pushes its move and a `rollback` pops one; rolling back moves the alias to the `from`
//! of the move on top. So two rollbacks after promotions v1→v2→v3 land on v1, not back on v3.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::error::RegistryError;
use super::models::{check_name, model_id, version_id};
use super::{from_millis, to_millis};

/// Longest reason kept with a move, in bytes.
pub const MAX_REASON_BYTES: usize = 1_024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AliasAction {
    Set,
    Rollback,
    Delete,
}

impl AliasAction {
    fn as_str(self) -> &'static str {
        match self {
            AliasAction::Set => "set",
            AliasAction::Rollback => "rollback",
            AliasAction::Delete => "delete",
        }
    }

    fn parse(text: &str) -> AliasAction {
        match text {
            "rollback" => AliasAction::Rollback,
            "delete" => AliasAction::Delete,
            _ => AliasAction::Set,
        }
    }
}

/// One entry of an alias's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AliasMove {
    pub alias: String,
    pub action: AliasAction,
    pub from: Option<u32>,
    pub to: Option<u32>,
    pub at: DateTime<Utc>,
    pub reason: String,
    /// The API token's name when auth is on; `None` for unauthenticated or local callers.
    pub actor: Option<String>,
}

/// An alias and where it points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alias {
    pub model: String,
    pub alias: String,
    pub version: u32,
    pub updated_at: DateTime<Utc>,
}

/// Who moves an alias, why, and when.
#[derive(Debug, Clone)]
pub struct MoveContext<'a> {
    pub reason: &'a str,
    pub actor: Option<&'a str>,
    pub at: DateTime<Utc>,
}

pub(crate) fn check_alias_name(alias: &str) -> Result<(), RegistryError> {
    check_name("alias", alias, false)?;
    if alias.chars().all(|c| c.is_ascii_digit()) {
        return Err(RegistryError::invalid(
            "alias",
            format!(
                "\"{alias}\" is a number; an alias needs a letter so it is never mistaken for a version"
            ),
        ));
    }
    Ok(())
}

fn check_reason(reason: &str) -> Result<(), RegistryError> {
    if reason.len() > MAX_REASON_BYTES {
        return Err(RegistryError::invalid(
            "reason",
            format!(
                "is {} bytes, at most {MAX_REASON_BYTES} allowed",
                reason.len()
            ),
        ));
    }
    Ok(())
}

fn current(conn: &Connection, model_id: i64, alias: &str) -> Result<Option<u32>, RegistryError> {
    Ok(conn
        .query_row(
            "SELECT version FROM aliases WHERE model_id = ?1 AND alias = ?2",
            params![model_id, alias],
            |row| row.get(0),
        )
        .optional()?)
}

/// Writes the alias row (or removes it for `to = None`) and appends the move.
fn apply_move(
    conn: &Connection,
    model_id: i64,
    alias: &str,
    action: AliasAction,
    from: Option<u32>,
    to: Option<u32>,
    context: &MoveContext<'_>,
) -> Result<AliasMove, RegistryError> {
    let at = to_millis(context.at);
    match to {
        Some(version) => conn.execute(
            "INSERT INTO aliases (model_id, alias, version, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (model_id, alias) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
            params![model_id, alias, version, at],
        )?,
        None => conn.execute(
            "DELETE FROM aliases WHERE model_id = ?1 AND alias = ?2",
            params![model_id, alias],
        )?,
    };
    conn.execute(
        "INSERT INTO alias_history (model_id, alias, action, from_version, to_version, at, reason, actor)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            model_id,
            alias,
            action.as_str(),
            from,
            to,
            at,
            context.reason,
            context.actor
        ],
    )?;
    Ok(AliasMove {
        alias: alias.to_string(),
        action,
        from,
        to,
        at: from_millis(at),
        reason: context.reason.to_string(),
        actor: context.actor.map(str::to_string),
    })
}

/// Points `alias` at `version`. Pointing it where it already points changes nothing and
/// returns `None` (no history entry, so rollback is not disturbed by repeated promotions).
pub(crate) fn set_alias(
    conn: &Connection,
    model: &str,
    alias: &str,
    version: u32,
    context: &MoveContext<'_>,
) -> Result<Option<AliasMove>, RegistryError> {
    check_alias_name(alias)?;
    check_reason(context.reason)?;
    let id = model_id(conn, model)?;
    version_id(conn, id, model, version)?;
    let from = current(conn, id, alias)?;
    if from == Some(version) {
        return Ok(None);
    }
    apply_move(
        conn,
        id,
        alias,
        AliasAction::Set,
        from,
        Some(version),
        context,
    )
    .map(Some)
}

pub(crate) fn delete_alias(
    conn: &Connection,
    model: &str,
    alias: &str,
    context: &MoveContext<'_>,
) -> Result<AliasMove, RegistryError> {
    check_reason(context.reason)?;
    let id = model_id(conn, model)?;
    let Some(from) = current(conn, id, alias)? else {
        return Err(RegistryError::AliasNotFound {
            model: model.to_string(),
            alias: alias.to_string(),
        });
    };
    apply_move(
        conn,
        id,
        alias,
        AliasAction::Delete,
        Some(from),
        None,
        context,
    )
}

/// Moves `alias` back to the target it had before its latest move that is not yet undone.
pub(crate) fn rollback_alias(
    conn: &Connection,
    model: &str,
    alias: &str,
    context: &MoveContext<'_>,
) -> Result<AliasMove, RegistryError> {
    check_reason(context.reason)?;
    let id = model_id(conn, model)?;
    let history = history_of(conn, id, alias)?;
    if history.is_empty() {
        return Err(RegistryError::AliasNotFound {
            model: model.to_string(),
            alias: alias.to_string(),
        });
    }
    // Replay: set/delete push their move, rollback pops one.
    let mut undo: Vec<&AliasMove> = Vec::new();
    for entry in &history {
        match entry.action {
            AliasAction::Set | AliasAction::Delete => undo.push(entry),
            AliasAction::Rollback => {
                undo.pop();
            }
        }
    }
    let nothing = || RegistryError::NothingToRollBack {
        model: model.to_string(),
        alias: alias.to_string(),
    };
    let target = undo.last().ok_or_else(nothing)?.from.ok_or_else(nothing)?;
    let from = current(conn, id, alias)?;
    apply_move(
        conn,
        id,
        alias,
        AliasAction::Rollback,
        from,
        Some(target),
        context,
    )
}

fn history_of(
    conn: &Connection,
    model_id: i64,
    alias: &str,
) -> Result<Vec<AliasMove>, RegistryError> {
    let mut statement = conn.prepare_cached(
        "SELECT alias, action, from_version, to_version, at, reason, actor FROM alias_history
         WHERE model_id = ?1 AND alias = ?2 ORDER BY id",
    )?;
    let rows = statement.query_map(params![model_id, alias], move_from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(crate) fn move_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AliasMove> {
    Ok(AliasMove {
        alias: row.get(0)?,
        action: AliasAction::parse(&row.get::<_, String>(1)?),
        from: row.get(2)?,
        to: row.get(3)?,
        at: from_millis(row.get(4)?),
        reason: row.get(5)?,
        actor: row.get(6)?,
    })
}

/// The history of one alias, oldest first; unknown alias → [`RegistryError::AliasNotFound`].
pub(crate) fn alias_history(
    conn: &Connection,
    model: &str,
    alias: &str,
) -> Result<Vec<AliasMove>, RegistryError> {
    let id = model_id(conn, model)?;
    let history = history_of(conn, id, alias)?;
    if history.is_empty() {
        return Err(RegistryError::AliasNotFound {
            model: model.to_string(),
            alias: alias.to_string(),
        });
    }
    Ok(history)
}

/// Every alias move of a model, oldest first (for export).
pub(crate) fn model_history(
    conn: &Connection,
    model_id: i64,
) -> Result<Vec<AliasMove>, RegistryError> {
    let mut statement = conn.prepare_cached(
        "SELECT alias, action, from_version, to_version, at, reason, actor FROM alias_history
         WHERE model_id = ?1 ORDER BY id",
    )?;
    let rows = statement.query_map([model_id], move_from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Appends a move as it was (import), without replaying checks.
pub(crate) fn append_raw(
    conn: &Connection,
    model_id: i64,
    entry: &AliasMove,
) -> Result<(), RegistryError> {
    conn.execute(
        "INSERT INTO alias_history (model_id, alias, action, from_version, to_version, at, reason, actor)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            model_id,
            entry.alias,
            entry.action.as_str(),
            entry.from,
            entry.to,
            to_millis(entry.at),
            entry.reason,
            entry.actor
        ],
    )?;
    Ok(())
}

pub(crate) fn resolve(conn: &Connection, model: &str, alias: &str) -> Result<Alias, RegistryError> {
    let id = model_id(conn, model)?;
    conn.query_row(
        "SELECT version, updated_at FROM aliases WHERE model_id = ?1 AND alias = ?2",
        params![id, alias],
        |row| {
            Ok(Alias {
                model: model.to_string(),
                alias: alias.to_string(),
                version: row.get(0)?,
                updated_at: from_millis(row.get(1)?),
            })
        },
    )
    .optional()?
    .ok_or_else(|| RegistryError::AliasNotFound {
        model: model.to_string(),
        alias: alias.to_string(),
    })
}

pub(crate) fn list_aliases(conn: &Connection, model: &str) -> Result<Vec<Alias>, RegistryError> {
    let id = model_id(conn, model)?;
    let mut statement = conn.prepare_cached(
        "SELECT alias, version, updated_at FROM aliases WHERE model_id = ?1 ORDER BY alias",
    )?;
    let rows = statement.query_map([id], |row| {
        Ok(Alias {
            model: model.to_string(),
            alias: row.get(0)?,
            version: row.get(1)?,
            updated_at: from_millis(row.get(2)?),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Inserts an alias row as it was (import).
pub(crate) fn insert_raw(
    conn: &Connection,
    model_id: i64,
    alias: &Alias,
) -> Result<(), RegistryError> {
    conn.execute(
        "INSERT INTO aliases (model_id, alias, version, updated_at) VALUES (?1, ?2, ?3, ?4)",
        params![
            model_id,
            alias.alias,
            alias.version,
            to_millis(alias.updated_at)
        ],
    )?;
    Ok(())
}
