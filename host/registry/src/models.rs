//! Models and their versions: the records, their validation, and their SQL.
//!
//! A model is a name with a task type and descriptive fields; its versions are numbered from 1
//! per model and immutable once written (a trigger in the schema enforces it), except their
//! lifecycle [`VersionStatus`].

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::RegistryError;
use super::{from_millis, to_millis};

/// Task types with a meaning the defaults know about; any other slug is a user-defined type.
pub const KNOWN_TASK_TYPES: &[&str] = &[
    "forecasting",
    "classification",
    "regression",
    "anomaly_detection",
    "portfolio_optimisation",
];

/// Longest name of a model, alias, tag, task type or metric, in characters.
pub const MAX_NAME_LEN: usize = 128;
/// Longest description, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 4_096;
/// Most tags or dependencies on one model.
pub const MAX_LIST_ITEMS: usize = 64;
/// Largest parameters / metadata object, in bytes of JSON.
pub const MAX_OBJECT_BYTES: usize = 64 << 10;
/// Longest artifact URI, in bytes.
pub const MAX_URI_BYTES: usize = 2_048;
/// Names the API routes use as path segments beside `/v1/models/{name}`.
const RESERVED_NAMES: &[&str] = &["best"];

/// A model to register.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewModel {
    pub name: String,
    pub task_type: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub model_class: String,
    #[serde(default)]
    pub artifact_uri: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub dependencies: Vec<String>,
    #[serde(default)]
    pub parameters: BTreeMap<String, Value>,
}

/// A registered model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub name: String,
    pub task_type: String,
    pub description: String,
    pub model_class: String,
    pub artifact_uri: Option<String>,
    pub sha256: Option<String>,
    pub tags: Vec<String>,
    pub dependencies: Vec<String>,
    pub parameters: BTreeMap<String, Value>,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<String>,
    /// Highest version number, 0 before the first version.
    pub latest_version: u32,
    /// Alias name → version.
    pub aliases: BTreeMap<String, u32>,
}

/// Lifecycle of a version. Archived versions are never chosen as the best model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionStatus {
    #[default]
    Registered,
    Validated,
    Archived,
}

impl VersionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionStatus::Registered => "registered",
            VersionStatus::Validated => "validated",
            VersionStatus::Archived => "archived",
        }
    }

    pub fn parse(text: &str) -> Option<VersionStatus> {
        match text {
            "registered" => Some(VersionStatus::Registered),
            "validated" => Some(VersionStatus::Validated),
            "archived" => Some(VersionStatus::Archived),
            _ => None,
        }
    }
}

/// A version to create; artifact fields default to the model's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewVersion {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub artifact_uri: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub parameters: BTreeMap<String, Value>,
    #[serde(default)]
    pub metadata: BTreeMap<String, Value>,
    #[serde(default)]
    pub status: VersionStatus,
}

/// An immutable model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    pub model: String,
    pub version: u32,
    pub status: VersionStatus,
    pub description: String,
    pub artifact_uri: Option<String>,
    pub sha256: Option<String>,
    pub parameters: BTreeMap<String, Value>,
    pub metadata: BTreeMap<String, Value>,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<String>,
}

/// Filters of the model list; all optional, combined with AND.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFilter {
    pub task: Option<String>,
    pub tag: Option<String>,
    /// Substring of the name.
    pub name: Option<String>,
    pub limit: Option<u32>,
    pub offset: Option<u32>,
}

/// Most models one list answer carries.
pub const MAX_LIST_LIMIT: u32 = 10_000;

/// Checks a name of a model, alias, tag or metric: 1-128 of `A-Z a-z 0-9 . _ - : /`, starting
/// with a letter or digit (so it is safe in a URL path segment once `/` is excluded).
pub fn check_name(field: &str, name: &str, allow_slash: bool) -> Result<(), RegistryError> {
    let len = name.chars().count();
    if len == 0 || len > MAX_NAME_LEN {
        return Err(RegistryError::invalid(
            field,
            format!("must be 1 to {MAX_NAME_LEN} characters, got {len}"),
        ));
    }
    let starts_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let chars_ok = name.chars().all(|c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':') || (allow_slash && c == '/')
    });
    if !starts_ok || !chars_ok {
        let allowed = if allow_slash {
            "letters, digits and . _ - : /"
        } else {
            "letters, digits and . _ - :"
        };
        return Err(RegistryError::invalid(
            field,
            format!("\"{name}\" must start with a letter or digit and contain only {allowed}"),
        ));
    }
    Ok(())
}

/// Lower-cases and checks a task type (a slug of `a-z 0-9 _ -`).
pub fn normalise_task_type(task: &str) -> Result<String, RegistryError> {
    let task = task.trim().to_ascii_lowercase().replace([' ', '-'], "_");
    let task = if task == "portfolio_optimization" {
        "portfolio_optimisation".to_string()
    } else {
        task
    };
    if task.is_empty()
        || task.len() > 64
        || !task
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(RegistryError::invalid(
            "task_type",
            format!(
                "\"{task}\" must be 1-64 of a-z 0-9 _ (known: {}; any other slug is user-defined)",
                KNOWN_TASK_TYPES.join(", ")
            ),
        ));
    }
    Ok(task)
}

fn check_text(field: &str, text: &str, max: usize) -> Result<(), RegistryError> {
    if text.len() > max {
        return Err(RegistryError::invalid(
            field,
            format!("is {} bytes, at most {max} allowed", text.len()),
        ));
    }
    Ok(())
}

fn check_sha256(field: &str, sha: &Option<String>) -> Result<Option<String>, RegistryError> {
    match sha {
        None => Ok(None),
        Some(text) => {
            let lower = text.to_ascii_lowercase();
            if lower.len() != 64 || !lower.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(RegistryError::invalid(
                    field,
                    "must be 64 hexadecimal characters (a sha256 digest)",
                ));
            }
            Ok(Some(lower))
        }
    }
}

fn check_object(field: &str, object: &BTreeMap<String, Value>) -> Result<String, RegistryError> {
    let text =
        serde_json::to_string(object).map_err(|e| RegistryError::invalid(field, e.to_string()))?;
    check_text(field, &text, MAX_OBJECT_BYTES)?;
    Ok(text)
}

fn check_list(field: &str, items: &[String]) -> Result<String, RegistryError> {
    if items.len() > MAX_LIST_ITEMS {
        return Err(RegistryError::invalid(
            field,
            format!(
                "has {} items, at most {MAX_LIST_ITEMS} allowed",
                items.len()
            ),
        ));
    }
    for (index, item) in items.iter().enumerate() {
        if item.is_empty() || item.len() > 256 {
            return Err(RegistryError::invalid(
                format!("{field}[{index}]"),
                "must be 1 to 256 bytes",
            ));
        }
    }
    serde_json::to_string(items).map_err(|e| RegistryError::invalid(field, e.to_string()))
}

impl NewModel {
    /// Validates and normalises (task type slug, sha256 lower case, tags sorted and unique).
    pub fn validated(mut self) -> Result<NewModel, RegistryError> {
        check_name("name", &self.name, false)?;
        if RESERVED_NAMES.contains(&self.name.as_str()) {
            return Err(RegistryError::invalid(
                "name",
                format!("\"{}\" is reserved by the API", self.name),
            ));
        }
        self.task_type = normalise_task_type(&self.task_type)?;
        check_text("description", &self.description, MAX_DESCRIPTION_BYTES)?;
        check_text("model_class", &self.model_class, 256)?;
        if let Some(uri) = &self.artifact_uri {
            check_text("artifact_uri", uri, MAX_URI_BYTES)?;
        }
        self.sha256 = check_sha256("sha256", &self.sha256)?;
        for (index, tag) in self.tags.iter().enumerate() {
            check_name(&format!("tags[{index}]"), tag, true)?;
        }
        self.tags.sort();
        self.tags.dedup();
        check_list("tags", &self.tags)?;
        check_list("dependencies", &self.dependencies)?;
        check_object("parameters", &self.parameters)?;
        Ok(self)
    }
}

impl NewVersion {
    pub fn validated(mut self) -> Result<NewVersion, RegistryError> {
        check_text("description", &self.description, MAX_DESCRIPTION_BYTES)?;
        if let Some(uri) = &self.artifact_uri {
            check_text("artifact_uri", uri, MAX_URI_BYTES)?;
        }
        self.sha256 = check_sha256("sha256", &self.sha256)?;
        check_object("parameters", &self.parameters)?;
        check_object("metadata", &self.metadata)?;
        Ok(self)
    }
}

/// The row id of a model, or [`RegistryError::ModelNotFound`].
pub(crate) fn model_id(conn: &Connection, name: &str) -> Result<i64, RegistryError> {
    conn.query_row("SELECT id FROM models WHERE name = ?1", [name], |row| {
        row.get(0)
    })
    .optional()?
    .ok_or_else(|| RegistryError::ModelNotFound(name.to_string()))
}

/// The row id of a version, or [`RegistryError::VersionNotFound`].
pub(crate) fn version_id(
    conn: &Connection,
    model_id: i64,
    model: &str,
    version: u32,
) -> Result<i64, RegistryError> {
    conn.query_row(
        "SELECT id FROM versions WHERE model_id = ?1 AND version = ?2",
        params![model_id, version],
        |row| row.get(0),
    )
    .optional()?
    .ok_or_else(|| RegistryError::VersionNotFound {
        model: model.to_string(),
        version,
    })
}

/// Inserts a validated model with an explicit creation time (import keeps the original).
pub(crate) fn insert_model(
    conn: &Connection,
    model: &NewModel,
    created_at: DateTime<Utc>,
    created_by: Option<&str>,
) -> Result<i64, RegistryError> {
    let exists: Option<i64> = conn
        .query_row(
            "SELECT id FROM models WHERE name = ?1",
            [&model.name],
            |row| row.get(0),
        )
        .optional()?;
    if exists.is_some() {
        return Err(RegistryError::ModelExists(model.name.clone()));
    }
    conn.execute(
        "INSERT INTO models (name, task_type, description, model_class, artifact_uri, sha256, tags, dependencies, parameters, created_at, created_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            model.name,
            model.task_type,
            model.description,
            model.model_class,
            model.artifact_uri,
            model.sha256,
            check_list("tags", &model.tags)?,
            check_list("dependencies", &model.dependencies)?,
            check_object("parameters", &model.parameters)?,
            to_millis(created_at),
            created_by,
        ],
    )?;
    let id = conn.last_insert_rowid();
    let mut tag_insert = conn.prepare("INSERT INTO model_tags (tag, model_id) VALUES (?1, ?2)")?;
    for tag in &model.tags {
        tag_insert.execute(params![tag, id])?;
    }
    Ok(id)
}

/// Inserts the next version of a model; returns (row id, version number).
pub(crate) fn insert_version(
    conn: &Connection,
    model_id: i64,
    version: &NewVersion,
    created_at: DateTime<Utc>,
    created_by: Option<&str>,
) -> Result<(i64, u32), RegistryError> {
    let (next, model_uri, model_sha): (u32, Option<String>, Option<String>) = conn.query_row(
        "SELECT COALESCE((SELECT max(version) FROM versions WHERE model_id = ?1), 0) + 1, artifact_uri, sha256
         FROM models WHERE id = ?1",
        [model_id],
        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
    )?;
    let (uri, sha) = match &version.artifact_uri {
        Some(uri) => (Some(uri.clone()), version.sha256.clone()),
        None => (model_uri, version.sha256.clone().or(model_sha)),
    };
    conn.execute(
        "INSERT INTO versions (model_id, version, status, description, artifact_uri, sha256, parameters, metadata, created_at, created_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            model_id,
            next,
            version.status.as_str(),
            version.description,
            uri,
            sha,
            check_object("parameters", &version.parameters)?,
            check_object("metadata", &version.metadata)?,
            to_millis(created_at),
            created_by,
        ],
    )?;
    Ok((conn.last_insert_rowid(), next))
}

fn parse_json<T: serde::de::DeserializeOwned + Default>(text: &str) -> T {
    // Only this module writes these columns, always from a serialised value.
    serde_json::from_str(text).unwrap_or_default()
}

const MODEL_COLUMNS: &str = "m.id, m.name, m.task_type, m.description, m.model_class, m.artifact_uri, m.sha256, m.tags, m.dependencies, m.parameters, m.created_at, m.created_by,
     COALESCE((SELECT max(version) FROM versions v WHERE v.model_id = m.id), 0)";

fn model_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, Model)> {
    Ok((
        row.get(0)?,
        Model {
            name: row.get(1)?,
            task_type: row.get(2)?,
            description: row.get(3)?,
            model_class: row.get(4)?,
            artifact_uri: row.get(5)?,
            sha256: row.get(6)?,
            tags: parse_json(&row.get::<_, String>(7)?),
            dependencies: parse_json(&row.get::<_, String>(8)?),
            parameters: parse_json(&row.get::<_, String>(9)?),
            created_at: from_millis(row.get(10)?),
            created_by: row.get(11)?,
            latest_version: row.get(12)?,
            aliases: BTreeMap::new(),
        },
    ))
}

fn fill_aliases(conn: &Connection, models: &mut [(i64, Model)]) -> Result<(), RegistryError> {
    let mut statement =
        conn.prepare_cached("SELECT alias, version FROM aliases WHERE model_id = ?1")?;
    for (id, model) in models.iter_mut() {
        let rows = statement.query_map([*id], |row| Ok((row.get(0)?, row.get(1)?)))?;
        model.aliases = rows.collect::<rusqlite::Result<_>>()?;
    }
    Ok(())
}

pub(crate) fn get_model(conn: &Connection, name: &str) -> Result<Model, RegistryError> {
    let found = conn
        .query_row(
            &format!("SELECT {MODEL_COLUMNS} FROM models m WHERE m.name = ?1"),
            [name],
            model_from_row,
        )
        .optional()?;
    let Some(found) = found else {
        return Err(RegistryError::ModelNotFound(name.to_string()));
    };
    let mut models = [found];
    fill_aliases(conn, &mut models)?;
    let [(_, model)] = models;
    Ok(model)
}

/// Models matching `filter`, at most `cap` (the filter's `limit` may ask for fewer).
pub(crate) fn list_models(
    conn: &Connection,
    filter: &ModelFilter,
    cap: u32,
) -> Result<Vec<Model>, RegistryError> {
    let task = filter
        .task
        .as_deref()
        .map(normalise_task_type)
        .transpose()?;
    let limit = filter.limit.unwrap_or(cap).min(cap);
    let name_pattern = filter.name.as_ref().map(|n| {
        let escaped = n
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        format!("%{escaped}%")
    });
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {MODEL_COLUMNS} FROM models m
         WHERE (?1 IS NULL OR m.task_type = ?1)
           AND (?2 IS NULL OR EXISTS (SELECT 1 FROM model_tags t WHERE t.model_id = m.id AND t.tag = ?2))
           AND (?3 IS NULL OR m.name LIKE ?3 ESCAPE '\\')
         ORDER BY m.name LIMIT ?4 OFFSET ?5"
    ))?;
    let rows = statement.query_map(
        params![
            task,
            filter.tag,
            name_pattern,
            limit,
            filter.offset.unwrap_or(0)
        ],
        model_from_row,
    )?;
    let mut models: Vec<(i64, Model)> = rows.collect::<rusqlite::Result<_>>()?;
    fill_aliases(conn, &mut models)?;
    Ok(models.into_iter().map(|(_, m)| m).collect())
}

const VERSION_COLUMNS: &str = "v.version, v.status, v.description, v.artifact_uri, v.sha256, v.parameters, v.metadata, v.created_at, v.created_by";

fn version_from_row(model: &str, row: &rusqlite::Row<'_>) -> rusqlite::Result<Version> {
    let status: String = row.get(1)?;
    Ok(Version {
        model: model.to_string(),
        version: row.get(0)?,
        status: VersionStatus::parse(&status).unwrap_or_default(),
        description: row.get(2)?,
        artifact_uri: row.get(3)?,
        sha256: row.get(4)?,
        parameters: parse_json(&row.get::<_, String>(5)?),
        metadata: parse_json(&row.get::<_, String>(6)?),
        created_at: from_millis(row.get(7)?),
        created_by: row.get(8)?,
    })
}

pub(crate) fn list_versions(conn: &Connection, model: &str) -> Result<Vec<Version>, RegistryError> {
    let id = model_id(conn, model)?;
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {VERSION_COLUMNS} FROM versions v WHERE v.model_id = ?1 ORDER BY v.version"
    ))?;
    let rows = statement.query_map([id], |row| version_from_row(model, row))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(crate) fn get_version(
    conn: &Connection,
    model: &str,
    version: u32,
) -> Result<Version, RegistryError> {
    let id = model_id(conn, model)?;
    conn.query_row(
        &format!(
            "SELECT {VERSION_COLUMNS} FROM versions v WHERE v.model_id = ?1 AND v.version = ?2"
        ),
        params![id, version],
        |row| version_from_row(model, row),
    )
    .optional()?
    .ok_or_else(|| RegistryError::VersionNotFound {
        model: model.to_string(),
        version,
    })
}

pub(crate) fn set_status(
    conn: &Connection,
    model: &str,
    version: u32,
    status: VersionStatus,
) -> Result<(), RegistryError> {
    let id = model_id(conn, model)?;
    let changed = conn.execute(
        "UPDATE versions SET status = ?3 WHERE model_id = ?1 AND version = ?2",
        params![id, version, status.as_str()],
    )?;
    if changed == 0 {
        return Err(RegistryError::VersionNotFound {
            model: model.to_string(),
            version,
        });
    }
    Ok(())
}
