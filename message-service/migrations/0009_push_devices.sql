-- Push devices (issue 26, docs/push.md): the devices a user registered for push
-- notifications. The webhook dispatcher's notifier reads them beside `members` and `receipts`
-- (one join picks a message's recipients that have a device) and deletes the ones its push
-- gateway rejects.

CREATE TABLE push_devices (
    device_id  TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    app_id     TEXT NOT NULL,
    platform   TEXT NOT NULL CHECK (platform IN ('fcm', 'apns', 'webpush')),
    pushkey    TEXT NOT NULL,
    data       JSONB NOT NULL DEFAULT '{}',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- One pushkey is one device: registering it again (by anyone) updates this row.
    UNIQUE (app_id, pushkey)
);
CREATE INDEX push_devices_by_user ON push_devices (user_id);
