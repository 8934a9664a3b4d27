-- The browser origins allowed to open WebSockets, stored so that every instance applies the
-- same list and a list set by `PUT /admin/origins` survives restarts.
--
-- `allowed_origins_list` holds one row (id 1) once the list has been set, either seeded from
-- CHATGATE_ALLOWED_ORIGINS on the first start or written by an admin. Its absence, not an
-- empty list, is what marks a first start: an admin may well set the list to empty.
-- `version` goes up with every change, so an instance can tell a stale read from a new list.
CREATE TABLE allowed_origins_list (
    id BIGINT PRIMARY KEY NOT NULL CHECK (id = 1),
    version BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL
);

-- One row per allowed origin (normalized: lower case, no trailing slash; `*` = any), in the
-- order the list was given.
CREATE TABLE allowed_origins (
    origin TEXT PRIMARY KEY NOT NULL,
    position BIGINT NOT NULL
);
