//! Push devices: a user registers the devices that should get push notifications while they
//! have no live connection (docs/push.md). The webhook dispatcher's notifier reads these rows
//! (joined with `members`, so a message's recipients are found in one query) and deletes the
//! ones its push gateway rejects.
//!
//! - `POST /api/v1/push/devices` `{app_id, platform, pushkey, data}` → `{device_id}`: 201 when
//!   new, 200 when the `(app_id, pushkey)` was registered already (it is updated and moves to
//!   the caller: a phone that changed hands or accounts pushes for its new user only).
//! - `GET /api/v1/push/devices` → the caller's devices.
//! - `DELETE /api/v1/push/devices/{device_id}` → 204 (logout); 404 when not the caller's.
//!
//! At most [`MAX_DEVICES_PER_USER`] per user, so one account cannot make every push fan out
//! without bound.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use switchboard_protocol::error_code::ErrorBody;
use switchboard_protocol::ErrorCode;
use switchboard_service_kit::http::ApiError;

use crate::auth::AuthUser;
use crate::http_common::db_error;
use crate::state::AppState;

/// Most devices one user may register.
pub const MAX_DEVICES_PER_USER: i64 = 20;
/// Longest pushkey (an FCM token is ~160 bytes, a Web Push endpoint URL a few hundred).
const MAX_PUSHKEY_LEN: usize = 1024;
/// Longest app id.
const MAX_APP_ID_LEN: usize = 128;
/// Largest `data` object, serialized.
const MAX_DATA_BYTES: usize = 4096;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/push/devices", web::post().to(register))
        .route("/api/v1/push/devices", web::get().to(list))
        .route("/api/v1/push/devices/{id}", web::delete().to(remove));
}

/// The routes' part of the public OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(register, list, remove))]
pub struct PushDevicesApi;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    /// The app the pushkey belongs to (e.g. `com.example.chat.ios`), 1-128 of
    /// `A-Z a-z 0-9 . _ -`.
    pub app_id: String,
    /// `fcm`, `apns` or `webpush`.
    pub platform: String,
    /// The platform's token for the device (FCM registration token, APNs device token, Web
    /// Push subscription endpoint), at most 1024 bytes.
    pub pushkey: String,
    /// Anything the push gateway needs besides (a JSON object of at most 4 KiB; e.g. Web
    /// Push's `keys`), passed to it untouched.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub data: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Device {
    pub device_id: String,
    pub app_id: String,
    pub platform: String,
    pub pushkey: String,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Registered {
    pub device_id: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeviceList {
    pub devices: Vec<Device>,
}

/// The request's fields checked; the data object serialized.
fn check(device: &NewDevice) -> Result<String, ApiError> {
    let app_ok = !device.app_id.is_empty()
        && device.app_id.len() <= MAX_APP_ID_LEN
        && device
            .app_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !app_ok {
        return Err(ApiError::bad_request(format!(
            "app_id is 1-{MAX_APP_ID_LEN} of A-Z a-z 0-9 . _ -"
        )));
    }
    if !matches!(device.platform.as_str(), "fcm" | "apns" | "webpush") {
        return Err(ApiError::bad_request(
            "platform is one of fcm, apns, webpush",
        ));
    }
    if device.pushkey.is_empty()
        || device.pushkey.len() > MAX_PUSHKEY_LEN
        || device.pushkey.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(format!(
            "pushkey is 1-{MAX_PUSHKEY_LEN} bytes without control characters"
        )));
    }
    let data = match &device.data {
        None | Some(serde_json::Value::Null) => "{}".to_owned(),
        Some(object @ serde_json::Value::Object(_)) => object.to_string(),
        Some(_) => return Err(ApiError::bad_request("data is a JSON object")),
    };
    // PostgreSQL's jsonb cannot hold U+0000.
    if data.len() > MAX_DATA_BYTES || data.contains("\\u0000") {
        return Err(ApiError::bad_request(format!(
            "data is at most {MAX_DATA_BYTES} bytes of JSON without U+0000"
        )));
    }
    Ok(data)
}

#[utoipa::path(
    post, path = "/api/v1/push/devices", tag = "push",
    request_body = NewDevice,
    responses(
        (status = 200, description = "the pushkey was registered already: updated, now the caller's", body = Registered),
        (status = 201, description = "registered", body = Registered),
        (status = 400, description = "a bad app_id, platform, pushkey or data", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "the caller has the most devices allowed (`forbidden`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn register(
    user: AuthUser,
    state: web::Data<AppState>,
    body: web::Json<NewDevice>,
) -> Result<HttpResponse, ApiError> {
    let device = body.into_inner();
    let data = check(&device)?;
    let new_id = format!("dev_{}", ulid::Ulid::new());
    let mut tx = state.store.pool().begin().await.map_err(db_error)?;
    // One registration per user at a time, so the bound holds under concurrent calls.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('push_devices:' || $1, 0))")
        .bind(&user.0)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    let others: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM push_devices
          WHERE user_id = $1 AND NOT (app_id = $2 AND pushkey = $3)",
    )
    .bind(&user.0)
    .bind(&device.app_id)
    .bind(&device.pushkey)
    .fetch_one(&mut *tx)
    .await
    .map_err(db_error)?;
    if others >= MAX_DEVICES_PER_USER {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "at most {MAX_DEVICES_PER_USER} push devices per user: delete one (logout) first"
            ),
        ));
    }
    let row = sqlx::query(
        "INSERT INTO push_devices (device_id, user_id, app_id, platform, pushkey, data)
         VALUES ($1, $2, $3, $4, $5, $6::jsonb)
         ON CONFLICT (app_id, pushkey) DO UPDATE
            SET user_id = EXCLUDED.user_id, platform = EXCLUDED.platform,
                data = EXCLUDED.data, updated_at = now()
         RETURNING device_id, (xmax = 0) AS inserted",
    )
    .bind(&new_id)
    .bind(&user.0)
    .bind(&device.app_id)
    .bind(&device.platform)
    .bind(&device.pushkey)
    .bind(&data)
    .fetch_one(&mut *tx)
    .await
    .map_err(db_error)?;
    tx.commit().await.map_err(db_error)?;
    let device_id: String = row.get("device_id");
    let inserted: bool = row.get("inserted");
    let answer = Registered { device_id };
    Ok(if inserted {
        HttpResponse::Created().json(answer)
    } else {
        HttpResponse::Ok().json(answer)
    })
}

#[utoipa::path(
    get, path = "/api/v1/push/devices", tag = "push",
    responses(
        (status = 200, description = "the caller's push devices", body = DeviceList),
        (status = 401, description = "no valid token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn list(user: AuthUser, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let rows = sqlx::query(
        "SELECT device_id, app_id, platform, pushkey, data::text AS data,
                to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS created_at,
                to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS updated_at
           FROM push_devices WHERE user_id = $1 ORDER BY created_at, device_id",
    )
    .bind(&user.0)
    .fetch_all(state.store.pool())
    .await
    .map_err(db_error)?;
    let devices = rows
        .iter()
        .map(|r| Device {
            device_id: r.get("device_id"),
            app_id: r.get("app_id"),
            platform: r.get("platform"),
            pushkey: r.get("pushkey"),
            data: serde_json::from_str(r.get::<&str, _>("data")).unwrap_or_default(),
            created_at: r.get("created_at"),
            updated_at: r.get("updated_at"),
        })
        .collect();
    Ok(HttpResponse::Ok().json(DeviceList { devices }))
}

#[utoipa::path(
    delete, path = "/api/v1/push/devices/{id}", tag = "push",
    params(("id" = String, Path, description = "device id")),
    responses(
        (status = 204, description = "deleted: no more pushes to it"),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 404, description = "not one of the caller's devices (`not_found`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn remove(
    user: AuthUser,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let deleted = sqlx::query("DELETE FROM push_devices WHERE device_id = $1 AND user_id = $2")
        .bind(id.as_str())
        .bind(&user.0)
        .execute(state.store.pool())
        .await
        .map_err(db_error)?
        .rows_affected();
    if deleted == 0 {
        return Err(ApiError::new(ErrorCode::NotFound, "no such push device"));
    }
    Ok(HttpResponse::NoContent().finish())
}
