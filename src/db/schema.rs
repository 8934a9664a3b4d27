// One schema for both backends: only types both support, times as epoch-ms BIGINT.

diesel::table! {
    users (id) {
        id -> Text,
        daily_limit -> Nullable<BigInt>,
        disabled -> Bool,
        version -> BigInt,
        created_at -> BigInt,
    }
}

diesel::table! {
    quota_usage (user_id, day) {
        user_id -> Text,
        day -> Text,
        used -> BigInt,
    }
}

diesel::table! {
    sessions (id) {
        id -> Text,
        user_id -> Text,
        started_at -> BigInt,
        ended_at -> Nullable<BigInt>,
        messages -> BigInt,
        avg_response_ms -> Nullable<BigInt>,
    }
}

diesel::joinable!(quota_usage -> users (user_id));

diesel::table! {
    request_log (id) {
        id -> Text,
        user_id -> Text,
        session_id -> Nullable<Text>,
        model -> Text,
        started_at -> BigInt,
        latency_ms -> BigInt,
        tokens_in -> BigInt,
        tokens_out -> BigInt,
        estimated -> Bool,
        outcome -> Text,
    }
}

diesel::table! {
    usage_rollup (bucket_start, model) {
        bucket_start -> BigInt,
        model -> Text,
        requests -> BigInt,
        errors -> BigInt,
        latency_sum_ms -> BigInt,
        latency_count -> BigInt,
        tokens_in -> BigInt,
        tokens_out -> BigInt,
    }
}

diesel::table! {
    flush_batches (id) {
        id -> Text,
        written_at -> BigInt,
    }
}

diesel::table! {
    collector_lease (name) {
        name -> Text,
        holder -> Text,
        run_id -> Text,
        expires_at -> BigInt,
    }
}

diesel::table! {
    collector_runs (run_id) {
        run_id -> Text,
        holder -> Text,
        started_at -> BigInt,
        finished_at -> Nullable<BigInt>,
        processed -> BigInt,
        stored -> BigInt,
        skipped -> BigInt,
        duration_ms -> Nullable<BigInt>,
        lock_wait_ms -> BigInt,
        status -> Text,
        error -> Nullable<Text>,
    }
}

diesel::table! {
    allowed_origins_list (id) {
        id -> BigInt,
        version -> BigInt,
        updated_at -> BigInt,
        updated_by -> Text,
    }
}

diesel::table! {
    allowed_origins (origin) {
        origin -> Text,
        position -> BigInt,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    users,
    quota_usage,
    sessions,
    request_log,
    usage_rollup,
    flush_batches,
    collector_lease,
    collector_runs,
    allowed_origins_list,
    allowed_origins,
);
