-- API tokens created by an admin (DESIGN §9). Only the SHA-256 digest of a token is kept: the
-- token itself is shown once, when it is created. Tokens named in the configuration are not
-- stored here.

CREATE TABLE api_tokens (
    id           bigserial PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    role         text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    token_sha256 bytea NOT NULL UNIQUE CHECK (octet_length(token_sha256) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text NOT NULL
);
