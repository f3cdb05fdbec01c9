"""Numbered schema migrations of the server's DuckDB file, applied in order at start and recorded.

Append new migrations at the end with the next number; never edit one that has shipped.
Timestamps are naive UTC ``TIMESTAMP`` values; JSON documents are stored as text.
"""

from __future__ import annotations

from typing import NamedTuple


class Migration(NamedTuple):
    number: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "registry and fleet",
        """
        CREATE TABLE credentials (
            credential_id VARCHAR PRIMARY KEY,
            token_sha256 VARCHAR NOT NULL UNIQUE,
            role VARCHAR NOT NULL,
            store_id VARCHAR,
            label VARCHAR NOT NULL DEFAULT '',
            created_at TIMESTAMP NOT NULL,
            revoked_at TIMESTAMP
        );
        CREATE TABLE stores (
            store_id VARCHAR PRIMARY KEY,
            name VARCHAR NOT NULL DEFAULT '',
            region VARCHAR NOT NULL DEFAULT '',
            type VARCHAR NOT NULL DEFAULT '',
            size VARCHAR NOT NULL DEFAULT '',
            tags VARCHAR NOT NULL DEFAULT '[]',
            model_name VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL,
            revoked_at TIMESTAMP
        );
        CREATE TABLE store_groups (
            group_name VARCHAR NOT NULL,
            store_id VARCHAR NOT NULL,
            PRIMARY KEY (group_name, store_id)
        );
        CREATE TABLE enrollment_tokens (
            token_sha256 VARCHAR PRIMARY KEY,
            store_id VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL,
            expires_at TIMESTAMP NOT NULL,
            used_at TIMESTAMP
        );
        CREATE TABLE agent_status (
            store_id VARCHAR PRIMARY KEY,
            state VARCHAR NOT NULL,
            model_name VARCHAR,
            active_version INTEGER,
            last_scored_at TIMESTAMP,
            agent_version VARCHAR NOT NULL DEFAULT '',
            sent_at TIMESTAMP NOT NULL,
            last_contact_at TIMESTAMP NOT NULL
        );
        CREATE TABLE report_keys (
            store_id VARCHAR NOT NULL,
            idempotency_key VARCHAR NOT NULL,
            received_at TIMESTAMP NOT NULL,
            PRIMARY KEY (store_id, idempotency_key)
        );
        CREATE TABLE models (
            name VARCHAR PRIMARY KEY,
            description VARCHAR NOT NULL DEFAULT '',
            tags VARCHAR NOT NULL DEFAULT '[]',
            created_at TIMESTAMP NOT NULL
        );
        CREATE TABLE model_versions (
            model_name VARCHAR NOT NULL,
            version INTEGER NOT NULL,
            bundle_sha256 VARCHAR NOT NULL,
            bundle_size BIGINT NOT NULL,
            manifest VARCHAR NOT NULL,
            run_id VARCHAR,
            dataset_id VARCHAR,
            created_at TIMESTAMP NOT NULL,
            created_by VARCHAR NOT NULL,
            PRIMARY KEY (model_name, version)
        );
        CREATE TABLE aliases (
            model_name VARCHAR NOT NULL,
            alias VARCHAR NOT NULL,
            version INTEGER NOT NULL,
            updated_at TIMESTAMP NOT NULL,
            updated_by VARCHAR NOT NULL,
            PRIMARY KEY (model_name, alias)
        );
        CREATE SEQUENCE alias_event_ids START 1;
        CREATE TABLE alias_events (
            event_id BIGINT PRIMARY KEY DEFAULT nextval('alias_event_ids'),
            model_name VARCHAR NOT NULL,
            alias VARCHAR NOT NULL,
            from_version INTEGER,
            to_version INTEGER NOT NULL,
            actor VARCHAR NOT NULL,
            reason VARCHAR NOT NULL DEFAULT '',
            moved_at TIMESTAMP NOT NULL
        );
        CREATE TABLE datasets (
            dataset_id VARCHAR PRIMARY KEY,
            name VARCHAR NOT NULL DEFAULT '',
            schema VARCHAR NOT NULL DEFAULT '{}',
            row_count BIGINT,
            date_min VARCHAR,
            date_max VARCHAR,
            stores VARCHAR NOT NULL DEFAULT '[]',
            source VARCHAR NOT NULL DEFAULT '',
            created_at TIMESTAMP NOT NULL
        );
        CREATE TABLE runs (
            run_id VARCHAR PRIMARY KEY,
            model_name VARCHAR NOT NULL DEFAULT '',
            status VARCHAR NOT NULL DEFAULT 'finished',
            params VARCHAR NOT NULL DEFAULT '{}',
            metrics VARCHAR NOT NULL DEFAULT '{}',
            selection VARCHAR NOT NULL DEFAULT '{}',
            artifacts VARCHAR NOT NULL DEFAULT '[]',
            dataset_id VARCHAR,
            code_version VARCHAR NOT NULL DEFAULT '',
            packages VARCHAR NOT NULL DEFAULT '{}',
            started_at TIMESTAMP,
            finished_at TIMESTAMP,
            record VARCHAR NOT NULL DEFAULT '{}',
            created_at TIMESTAMP NOT NULL,
            created_by VARCHAR NOT NULL
        );
        """,
    ),
    Migration(
        2,
        "monitoring: accuracy and drift reports, alerts, webhook deliveries",
        """
        CREATE TABLE monitoring_reports (
            kind VARCHAR NOT NULL,
            store_id VARCHAR NOT NULL,
            report_id VARCHAR NOT NULL,
            received_at TIMESTAMP NOT NULL,
            PRIMARY KEY (kind, store_id, report_id)
        );
        CREATE TABLE accuracy_rows (
            report_id VARCHAR NOT NULL,
            store_id VARCHAR NOT NULL,
            model_name VARCHAR NOT NULL,
            version INTEGER NOT NULL,
            role VARCHAR NOT NULL,
            period_start DATE NOT NULL,
            period_end DATE NOT NULL,
            category VARCHAR NOT NULL,
            horizon_bucket VARCHAR NOT NULL,
            n BIGINT NOT NULL,
            abs_err_sum DOUBLE NOT NULL,
            abs_y_sum DOUBLE NOT NULL,
            err_sum DOUBLE NOT NULL,
            scaled_abs_err_sum DOUBLE NOT NULL,
            scaled_n BIGINT NOT NULL,
            hits_80 BIGINT,
            hits_95 BIGINT,
            covered VARCHAR NOT NULL DEFAULT '{}',
            backtest_wape DOUBLE,
            received_at TIMESTAMP NOT NULL
        );
        CREATE TABLE drift_reports (
            report_id VARCHAR NOT NULL,
            store_id VARCHAR NOT NULL,
            model_name VARCHAR NOT NULL,
            version INTEGER NOT NULL,
            role VARCHAR NOT NULL,
            period_start DATE NOT NULL,
            period_end DATE NOT NULL,
            unknown_item_share DOUBLE NOT NULL,
            missing_rate DOUBLE NOT NULL,
            received_at TIMESTAMP NOT NULL,
            PRIMARY KEY (store_id, report_id)
        );
        CREATE TABLE drift_rows (
            report_id VARCHAR NOT NULL,
            store_id VARCHAR NOT NULL,
            model_name VARCHAR NOT NULL,
            version INTEGER NOT NULL,
            role VARCHAR NOT NULL,
            period_start DATE NOT NULL,
            period_end DATE NOT NULL,
            category VARCHAR NOT NULL,
            comparison VARCHAR NOT NULL,
            drifted BOOLEAN NOT NULL,
            score DOUBLE,
            psi DOUBLE,
            wasserstein DOUBLE,
            ks_pvalue DOUBLE,
            zero_rate DOUBLE,
            tests VARCHAR NOT NULL DEFAULT '[]'
        );
        CREATE TABLE alerts (
            alert_id VARCHAR PRIMARY KEY,
            fingerprint VARCHAR NOT NULL,
            rule VARCHAR NOT NULL,
            metric VARCHAR NOT NULL,
            severity VARCHAR NOT NULL,
            scope_key VARCHAR NOT NULL DEFAULT '{}',
            model_name VARCHAR,
            store_id VARCHAR,
            category VARCHAR,
            status VARCHAR NOT NULL,
            value DOUBLE,
            threshold DOUBLE NOT NULL,
            samples BIGINT NOT NULL DEFAULT 0,
            evaluations BIGINT NOT NULL DEFAULT 1,
            fired_at TIMESTAMP NOT NULL,
            updated_at TIMESTAMP NOT NULL,
            resolved_at TIMESTAMP,
            acked_at TIMESTAMP,
            acked_by VARCHAR
        );
        CREATE SEQUENCE alert_delivery_ids START 1;
        CREATE TABLE alert_deliveries (
            delivery_id BIGINT PRIMARY KEY DEFAULT nextval('alert_delivery_ids'),
            alert_id VARCHAR NOT NULL,
            event VARCHAR NOT NULL,
            target VARCHAR NOT NULL,
            attempt INTEGER NOT NULL,
            status_code INTEGER,
            ok BOOLEAN NOT NULL,
            error VARCHAR NOT NULL DEFAULT '',
            attempted_at TIMESTAMP NOT NULL
        );
        CREATE INDEX accuracy_rows_scope ON accuracy_rows (model_name, store_id, category);
        CREATE INDEX drift_rows_scope ON drift_rows (model_name, store_id, category);
        """,
    ),
    Migration(
        3,
        "monitoring: central actuals batches",
        """
        CREATE TABLE actuals_batches (
            batch_id VARCHAR NOT NULL,
            store_id VARCHAR NOT NULL,
            rows BIGINT NOT NULL,
            date_min DATE,
            date_max DATE,
            content_sha256 VARCHAR NOT NULL,
            files VARCHAR NOT NULL DEFAULT '[]',
            dataset_id VARCHAR NOT NULL,
            received_at TIMESTAMP NOT NULL,
            PRIMARY KEY (store_id, batch_id)
        );
        """,
    ),
    Migration(
        4,
        "rollouts: plans, wave stores, audited decisions, engine lease",
        """
        CREATE TABLE rollouts (
            rollout_id VARCHAR PRIMARY KEY,
            model_name VARCHAR NOT NULL,
            candidate_version INTEGER NOT NULL,
            champion_version INTEGER NOT NULL,
            plan VARCHAR NOT NULL,
            steps VARCHAR NOT NULL,
            status VARCHAR NOT NULL,
            step INTEGER NOT NULL,
            step_started_at TIMESTAMP NOT NULL,
            approved_step INTEGER,
            last_outcome VARCHAR NOT NULL DEFAULT '',
            last_evaluation VARCHAR NOT NULL DEFAULT '{}',
            created_at TIMESTAMP NOT NULL,
            created_by VARCHAR NOT NULL,
            updated_at TIMESTAMP NOT NULL,
            finished_at TIMESTAMP
        );
        CREATE TABLE rollout_stores (
            rollout_id VARCHAR NOT NULL,
            store_id VARCHAR NOT NULL,
            wave INTEGER NOT NULL,
            stratum VARCHAR NOT NULL,
            PRIMARY KEY (rollout_id, store_id)
        );
        CREATE SEQUENCE rollout_decision_ids START 1;
        CREATE TABLE rollout_decisions (
            decision_id BIGINT PRIMARY KEY DEFAULT nextval('rollout_decision_ids'),
            rollout_id VARCHAR NOT NULL,
            step INTEGER NOT NULL,
            action VARCHAR NOT NULL,
            actor VARCHAR NOT NULL,
            reason VARCHAR NOT NULL DEFAULT '',
            numbers VARCHAR NOT NULL DEFAULT '{}',
            decided_at TIMESTAMP NOT NULL
        );
        CREATE TABLE engine_leases (
            name VARCHAR PRIMARY KEY,
            holder VARCHAR NOT NULL,
            expires_at TIMESTAMP NOT NULL
        );
        """,
    ),
    Migration(
        5,
        "retraining runs",
        """
        CREATE TABLE retraining_runs (
            retraining_id VARCHAR PRIMARY KEY,
            model_name VARCHAR NOT NULL,
            trigger VARCHAR NOT NULL,
            reason VARCHAR NOT NULL DEFAULT '',
            alert_id VARCHAR,
            status VARCHAR NOT NULL,
            stage VARCHAR NOT NULL DEFAULT '',
            dataset_id VARCHAR,
            version INTEGER,
            run_id VARCHAR,
            rollout VARCHAR NOT NULL DEFAULT '',
            error VARCHAR NOT NULL DEFAULT '',
            log_tail VARCHAR NOT NULL DEFAULT '',
            work_dir VARCHAR NOT NULL DEFAULT '',
            requested_by VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL,
            started_at TIMESTAMP,
            finished_at TIMESTAMP
        );
        CREATE INDEX retraining_runs_model ON retraining_runs (model_name, created_at);
        """,
    ),
    Migration(
        6,
        "agent error counts",
        """
        ALTER TABLE agent_status ADD COLUMN errors VARCHAR DEFAULT '{}';
        ALTER TABLE agent_status ADD COLUMN last_error VARCHAR;
        ALTER TABLE agent_status ADD COLUMN last_error_at TIMESTAMP;
        ALTER TABLE agent_status ADD COLUMN shadow_version INTEGER;
        CREATE TABLE agent_errors (
            store_id VARCHAR NOT NULL,
            kind VARCHAR NOT NULL,
            new_errors INTEGER NOT NULL,
            total INTEGER NOT NULL,
            last_error VARCHAR,
            received_at TIMESTAMP NOT NULL
        );
        CREATE INDEX agent_errors_store ON agent_errors (store_id, received_at);
        """,
    ),
    Migration(
        7,
        "paired accuracy evidence",
        """
        ALTER TABLE accuracy_rows ADD COLUMN scoring_id VARCHAR;
        """,
    ),
    Migration(
        8,
        "agent errors that still stand",
        """
        ALTER TABLE agent_status ADD COLUMN current_errors VARCHAR DEFAULT '{}';
        """,
    ),
    Migration(
        9,
        "trusted signing keys: audit of trust and revocation",
        """
        CREATE TABLE key_events (
            event_at TIMESTAMP NOT NULL,
            action VARCHAR NOT NULL,
            key_id VARCHAR NOT NULL,
            actor VARCHAR NOT NULL,
            label VARCHAR NOT NULL DEFAULT ''
        );
        """,
    ),
    Migration(
        10,
        "alert details: the numbers a learnt-baseline rule judged by",
        """
        ALTER TABLE alerts ADD COLUMN details VARCHAR DEFAULT '{}';
        """,
    ),
    Migration(
        11,
        "replenishment totals and achieved service level per store and category",
        """
        CREATE TABLE replenishment_rows (
            report_id VARCHAR NOT NULL,
            store_id VARCHAR NOT NULL,
            model_name VARCHAR NOT NULL,
            version INTEGER NOT NULL,
            period_end DATE NOT NULL,
            category VARCHAR NOT NULL,
            items BIGINT NOT NULL,
            items_to_order BIGINT NOT NULL,
            proposed_units DOUBLE NOT NULL,
            order_up_to_units DOUBLE NOT NULL,
            target_service_level DOUBLE,
            cycles BIGINT NOT NULL,
            cycles_met BIGINT NOT NULL,
            achieved_service_level DOUBLE,
            received_at TIMESTAMP NOT NULL
        );
        CREATE INDEX replenishment_rows_store ON replenishment_rows (store_id, category);
        -- each store's newest totals (those of the last report that carried any): what the API and the
        -- dashboard read, one row per store x category however long the history grows
        CREATE TABLE replenishment_latest AS SELECT * FROM replenishment_rows WITH NO DATA;
        """,
    ),
    Migration(
        12,
        "idempotency claims keyed by one column",
        # DuckDB checks a one-column key through its index, while ``ON CONFLICT`` on the two- and
        # three-column keys scanned the whole table (26 ms a claim at a million keys). ``claim`` is
        # ``<bytes of store_id>:<store_id>:<key>`` (``server.storage.claim_id``), with the kind in front for
        # reports: the length makes it unambiguous whatever the key holds.
        """
        CREATE TABLE report_keys_v12 (
            claim VARCHAR PRIMARY KEY,
            store_id VARCHAR NOT NULL,
            idempotency_key VARCHAR NOT NULL,
            received_at TIMESTAMP NOT NULL
        );
        INSERT INTO report_keys_v12
            SELECT strlen(store_id) || ':' || store_id || ':' || idempotency_key, store_id, idempotency_key,
                received_at
            FROM report_keys;
        DROP TABLE report_keys;
        ALTER TABLE report_keys_v12 RENAME TO report_keys;
        CREATE TABLE monitoring_reports_v12 (
            claim VARCHAR PRIMARY KEY,
            kind VARCHAR NOT NULL,
            store_id VARCHAR NOT NULL,
            report_id VARCHAR NOT NULL,
            received_at TIMESTAMP NOT NULL
        );
        INSERT INTO monitoring_reports_v12
            SELECT kind || ':' || strlen(store_id) || ':' || store_id || ':' || report_id, kind, store_id,
                report_id, received_at
            FROM monitoring_reports;
        DROP TABLE monitoring_reports;
        ALTER TABLE monitoring_reports_v12 RENAME TO monitoring_reports;
        """,
    ),
)
