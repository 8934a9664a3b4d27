DROP TABLE allowed_origins;
DROP TABLE allowed_origins_list;
