-- One row per send request: what happened to it, written from the request itself (on its way to
-- the workers) and from the workers' delivery events.
CREATE TABLE records (
    id                   text PRIMARY KEY,
    bot                  text NOT NULL,
    method               text NOT NULL,
    chat_id              text NOT NULL,
    -- queued, scheduled, retrying, delivered, failed, cancelled, deleted
    status               text NOT NULL,
    -- A status only gives way to one of at least its rank, so events applied out of order, or
    -- twice, change nothing.
    status_rank          smallint NOT NULL,
    attempts             integer NOT NULL DEFAULT 0,
    telegram_message_ids bigint[] NOT NULL DEFAULT '{}',
    error                jsonb,
    metadata             jsonb,
    send_at              timestamptz,
    -- Edits asked for after delivery, each with its outcome: [{"n", "method", "status", "at", "error"?}].
    edits                jsonb NOT NULL DEFAULT '[]',
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL
);

-- Listing newest first (with a cursor), by status, by chat; and retention by age.
CREATE INDEX records_newest ON records (created_at DESC, id DESC);
CREATE INDEX records_by_status ON records (status, created_at DESC, id DESC);
CREATE INDEX records_by_chat ON records (bot, chat_id, created_at DESC, id DESC);
