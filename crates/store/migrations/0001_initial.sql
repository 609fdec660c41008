-- Initial schema of the Tributary store.
--
-- Every per-user table references accounts(user) with ON DELETE CASCADE so
-- that deleting an account is a single DELETE and cannot leave orphans.
-- Booleans are INTEGER 0/1; SQLite has no separate boolean type.

CREATE TABLE accounts (
    user          TEXT    NOT NULL PRIMARY KEY,
    -- SCRAM salt and iteration count, shared by both key sets.
    salt          BLOB    NOT NULL,
    iterations    INTEGER NOT NULL,
    sha1_stored   BLOB    NOT NULL,
    sha1_server   BLOB    NOT NULL,
    sha256_stored BLOB    NOT NULL,
    sha256_server BLOB    NOT NULL,
    created_at    TEXT    NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE roster_items (
    user         TEXT    NOT NULL REFERENCES accounts (user) ON DELETE CASCADE,
    contact      TEXT    NOT NULL,
    name         TEXT,
    subscription TEXT    NOT NULL CHECK (subscription IN ('none', 'to', 'from', 'both')),
    ask          INTEGER NOT NULL,
    pending_in   INTEGER NOT NULL,
    approved     INTEGER NOT NULL,
    in_roster    INTEGER NOT NULL,
    PRIMARY KEY (user, contact)
);

-- Groups of a roster item in a table of their own rather than as encoded
-- text, keyed by position so that the client's order survives a round trip.
CREATE TABLE roster_groups (
    user     TEXT    NOT NULL,
    contact  TEXT    NOT NULL,
    position INTEGER NOT NULL,
    name     TEXT    NOT NULL,
    PRIMARY KEY (user, contact, position),
    FOREIGN KEY (user, contact) REFERENCES roster_items (user, contact) ON DELETE CASCADE
);

-- Roster versioning (RFC 6121 section 2.6). A missing row means version 0.
CREATE TABLE roster_versions (
    user    TEXT    NOT NULL PRIMARY KEY REFERENCES accounts (user) ON DELETE CASCADE,
    version INTEGER NOT NULL
);

-- Offline messages; the AUTOINCREMENT id gives the delivery order and is
-- never reused, so order holds even across deletions.
CREATE TABLE offline (
    id        INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    user      TEXT    NOT NULL REFERENCES accounts (user) ON DELETE CASCADE,
    stanza    TEXT    NOT NULL,
    stored_at TEXT    NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE INDEX offline_user ON offline (user, id);

CREATE TABLE vcards (
    user TEXT NOT NULL PRIMARY KEY REFERENCES accounts (user) ON DELETE CASCADE,
    xml  TEXT NOT NULL
);

CREATE TABLE private_data (
    user      TEXT NOT NULL REFERENCES accounts (user) ON DELETE CASCADE,
    namespace TEXT NOT NULL,
    xml       TEXT NOT NULL,
    PRIMARY KEY (user, namespace)
);

CREATE TABLE blocklist (
    user TEXT NOT NULL REFERENCES accounts (user) ON DELETE CASCADE,
    jid  TEXT NOT NULL,
    PRIMARY KEY (user, jid)
);
