-- call_events: one row per canonical event; event_id makes a replayed event a no-op.
CREATE TABLE call_events (
    event_id     text PRIMARY KEY,
    provider     text NOT NULL,
    account      text,
    session_key  text NOT NULL,
    session_id   text NOT NULL,
    call_id      text NOT NULL,
    leg          text,
    direction    text,
    status       text NOT NULL,
    final        boolean NOT NULL,
    from_number  text,
    to_number    text,
    from_country text,
    to_country   text,
    initiated_at timestamptz,
    ringing_at   timestamptz,
    answered_at  timestamptz,
    ended_at     timestamptz,
    occurred_at  timestamptz NOT NULL,
    received_at  timestamptz NOT NULL,
    duration_s   integer,
    billed_s     integer,
    cause_q850   integer,
    cause_label  text,
    cause_sip    integer,
    record       jsonb NOT NULL
);
CREATE INDEX call_events_session_key ON call_events (session_key);
CREATE INDEX call_events_from_number ON call_events (from_number);
CREATE INDEX call_events_to_number ON call_events (to_number);
CREATE INDEX call_events_occurred_at ON call_events (occurred_at);
CREATE INDEX call_events_status_occurred_at ON call_events (status, occurred_at);

-- call_sessions: the latest record of each session; event_count orders the versions.
CREATE TABLE call_sessions (
    session_key  text PRIMARY KEY,
    provider     text NOT NULL,
    account      text,
    session_id   text NOT NULL,
    status       text NOT NULL,
    final        boolean NOT NULL,
    started_at   timestamptz,
    initiated_at timestamptz,
    ringing_at   timestamptz,
    answered_at  timestamptz,
    ended_at     timestamptz,
    duration_s   integer,
    billed_s     integer,
    cause_q850   integer,
    cause_label  text,
    event_count  integer NOT NULL,
    updated_at   timestamptz NOT NULL,
    close_reason text,
    record       jsonb NOT NULL
);
CREATE INDEX call_sessions_started_at ON call_sessions (started_at);
CREATE INDEX call_sessions_status ON call_sessions (status);
CREATE INDEX call_sessions_provider_account ON call_sessions (provider, account);
