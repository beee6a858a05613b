-- Libraries (issue 18): which stored script versions each version was built
-- with, one row per library, written in the same transaction as the
-- version. The signed artifact's meta (`libraries`) is the record; this
-- table indexes it, so the dependents of a library (the current versions
-- that include it) are one query. A restore fills it from the artifacts.

CREATE TABLE script_libraries (
    name            TEXT NOT NULL,
    version         INTEGER NOT NULL,
    library         TEXT NOT NULL,
    library_version INTEGER NOT NULL,
    library_source_sha256 TEXT NOT NULL,
    PRIMARY KEY (name, version, library)
);

CREATE INDEX script_libraries_library ON script_libraries (library);
