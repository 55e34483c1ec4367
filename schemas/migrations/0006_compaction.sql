-- Closed daily partitions of `telemetry` whose unique index was rebuilt (store::partitions):
-- readings of a thousand vehicles arrive interleaved, which leaves that index's leaf pages
-- about two-thirds full; rebuilt once the day is over, they are packed to 90 %.
CREATE TABLE IF NOT EXISTS telemetry_compacted (
    partition    text PRIMARY KEY,
    compacted_at timestamptz NOT NULL DEFAULT now(),
    index_bytes_before bigint NOT NULL,
    index_bytes_after  bigint NOT NULL
);
