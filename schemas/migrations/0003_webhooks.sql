-- Webhooks and their transactional outbox (DESIGN §10).
--
-- Producers write `webhook_events` and one `webhook_deliveries` row per subscribed, enabled
-- webhook in the same transaction that changes the alert: nothing is sent for a change that
-- rolled back, nothing is lost when hyfleet stops. Workers claim one webhook at a time
-- (`FOR NO KEY UPDATE SKIP LOCKED`, which does not block producers' foreign-key checks) and
-- deliver its due rows in id order.

CREATE TABLE webhooks (
    id              bigserial PRIMARY KEY,
    name            text NOT NULL UNIQUE,
    url             text NOT NULL,
    -- Needed in clear to sign; never returned by the API nor logged.
    secret          text,
    events          text[] NOT NULL,
    format          text NOT NULL
                    CHECK (format IN ('generic', 'dingtalk', 'wecom', 'feishu', 'slack')),
    -- Messages per rolling minute; NULL: no limit.
    rate_per_minute integer CHECK (rate_per_minute > 0),
    source          text NOT NULL CHECK (source IN ('config', 'api')),
    enabled         boolean NOT NULL DEFAULT true,
    disabled_reason text,
    -- A receiver's Retry-After applies to the whole endpoint.
    paused_until    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- One row per alert transition: the payload every format is rendered from, so that each retry
-- sends the same body under the same id.
CREATE TABLE webhook_events (
    id          uuid PRIMARY KEY,
    event_type  text NOT NULL,
    alert_id    bigint NOT NULL,
    at          timestamptz NOT NULL,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_deliveries (
    id               bigserial PRIMARY KEY,
    webhook_id       bigint NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id         uuid NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
    -- Copied from the event: deliveries of one (webhook, alert) go out in id order.
    alert_id         bigint NOT NULL,
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'delivered', 'failed', 'cancelled')),
    attempts         integer NOT NULL DEFAULT 0,
    -- NULL: due now. Set from the worker's clock after a failed attempt.
    next_attempt_at  timestamptz,
    first_attempt_at timestamptz,
    delivered_at     timestamptz,
    last_status      integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (webhook_id, event_id)
);

CREATE INDEX webhook_deliveries_pending
    ON webhook_deliveries (webhook_id, id) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_pending_alert
    ON webhook_deliveries (webhook_id, alert_id, id) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);

-- Every request made, successful or not. A digest is one attempt covering several events.
CREATE TABLE webhook_attempts (
    id           bigserial PRIMARY KEY,
    webhook_id   bigint NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    at           timestamptz NOT NULL,
    event_ids    uuid[] NOT NULL,
    digest       boolean NOT NULL DEFAULT false,
    status_code  integer,
    error        text,
    duration_ms  integer NOT NULL,
    ok           boolean NOT NULL
);

CREATE INDEX webhook_attempts_by_webhook ON webhook_attempts (webhook_id, at DESC);
