-- Campaigns: one message to many chats. The recipients live here; the fan-out publishes them a
-- window at a time, and each message's fate is in `records` (id `<campaign id>:<idx>`).
CREATE TABLE campaigns (
    id               text PRIMARY KEY,
    bot              text NOT NULL,
    method           text NOT NULL,
    -- The params of every message, without chat_id; text and caption may hold {{name}} placeholders.
    params           jsonb NOT NULL,
    metadata         jsonb,
    send_at          timestamptz,
    max_rate_per_sec double precision,
    -- scheduled, running, paused, completed, cancelled
    status           text NOT NULL,
    recipients       integer NOT NULL,
    duplicates       integer NOT NULL,
    suppressed       integer NOT NULL,
    -- The fan-out's cursor: recipients with idx below it are on their way.
    published        integer NOT NULL DEFAULT 0,
    -- The dispatcher publishing it now, until when (any other takes over once it lapses).
    lease_owner      text,
    lease_until      timestamptz,
    -- Recall (deleting what was delivered): NULL, running or completed; its cursor (a record id).
    recall_status    text,
    recall_after     text NOT NULL DEFAULT '',
    recall_total     integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX campaigns_newest ON campaigns (created_at DESC, id DESC);
CREATE INDEX campaigns_active ON campaigns (status) WHERE status IN ('scheduled', 'running', 'paused');

CREATE TABLE campaign_recipients (
    campaign_id text NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    -- From 0 in the order given, duplicates dropped: the message id is `<campaign id>:<idx>`.
    idx         integer NOT NULL,
    chat_id     text NOT NULL,
    vars        jsonb,
    -- Skipped: an earlier send found the chat gone.
    suppressed  boolean NOT NULL DEFAULT false,
    PRIMARY KEY (campaign_id, idx)
);

-- Which campaign a record's message belongs to (from its delivery events), for the totals.
ALTER TABLE records ADD COLUMN campaign_id text;
CREATE INDEX records_by_campaign ON records (campaign_id, id) WHERE campaign_id IS NOT NULL;
