"""Writes the Grafana dashboards (fleet.json, spokes.json, hub.json) next to this file.

Run it after changing a panel: `python3 deploy/monitoring/dashboards.py`. The JSON files
are what operators import (Grafana > Dashboards > Import); each asks for a Prometheus
data source. A test checks every metric they query is one the nodes export.
"""

import json
import pathlib

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def panel(pid, title, exprs, x, y, w=12, h=8, kind="timeseries", unit="short", legend="{{instance}}"):
    return {
        "id": pid,
        "type": kind,
        "title": title,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(65 + i), "datasource": DS, "expr": e, "legendFormat": lf}
            for i, (e, lf) in enumerate(exprs)
        ],
    }


def dashboard(uid, title, panels):
    return {
        "__inputs": [{
            "name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource",
            "pluginId": "prometheus", "pluginName": "Prometheus",
        }],
        "uid": uid,
        "title": title,
        "tags": ["vigo-spanner"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "panels": panels,
    }


FLEET = dashboard("vigo-fleet", "Vigo Spanner / Fleet", [
    panel(1, "Envoys by compliance status", [
        ('sum by (status) (vigo_fleet_envoys)', "{{status}}")], 0, 0, w=16),
    panel(2, "Converged", [
        ('sum(vigo_fleet_envoys{status="converged"}) / clamp_min(sum(vigo_fleet_envoys{status!="revoked"}), 1)', "converged")],
        16, 0, w=8, kind="stat", unit="percentunit"),
    panel(3, "Offline", [
        ('sum(vigo_fleet_envoys{status="offline"})', "offline")], 16, 8, w=8, kind="stat"),
    panel(4, "Check-ins per second, by result", [
        ('sum by (result) (rate(vigo_checkins_total[5m]))', "{{result}}")], 0, 8, w=16),
    panel(5, "Enrollments per minute", [
        ('sum(rate(vigo_hub_enrollments_total[5m])) * 60', "enrolled"),
        ('sum(rate(vigo_hub_enrollment_refusals_total[5m])) * 60', "refused")], 0, 16),
    panel(6, "Policy reloads", [
        ('sum by (result) (increase(vigo_policy_reloads_total[1h]))', "{{result}}")], 12, 16),
])

SPOKES = dashboard("vigo-spokes", "Vigo Spanner / Spokes", [
    panel(1, "Envoys per spoke", [('vigo_envoys', "{{instance}}")], 0, 0),
    panel(2, "Check-in latency p50 / p99", [
        ('histogram_quantile(0.5, sum by (le, instance) (rate(vigo_checkin_duration_seconds_bucket[5m])))', "p50 {{instance}}"),
        ('histogram_quantile(0.99, sum by (le, instance) (rate(vigo_checkin_duration_seconds_bucket[5m])))', "p99 {{instance}}")],
        12, 0, unit="s"),
    panel(3, "CPU per spoke", [('rate(process_cpu_seconds_total{job="vigo-spoke"}[5m])', "{{instance}}")], 0, 8, unit="percentunit"),
    panel(4, "Resident memory", [('process_resident_memory_bytes{job="vigo-spoke"}', "{{instance}}")], 12, 8, unit="bytes"),
    panel(5, "Flush duration p99 and dirty envoys", [
        ('histogram_quantile(0.99, sum by (le, instance) (rate(vigo_flush_duration_seconds_bucket[5m])))', "flush p99 {{instance}}"),
        ('vigo_envoys_dirty', "dirty {{instance}}")], 0, 16),
    panel(6, "Shed requests and in-flight limit", [
        ('sum by (instance, requests) (rate(vigo_requests_shed_total[5m]))', "shed {{requests}} {{instance}}"),
        ('vigo_requests_in_flight_limit', "limit {{requests}} {{instance}}")], 12, 16),
    panel(7, "Open connections and streams", [
        ('vigo_connections_open{job="vigo-spoke"}', "connections {{instance}}"),
        ('vigo_open_streams', "streams {{instance}}")], 0, 24),
    panel(8, "Refused calls", [
        ('sum by (instance, code) (rate(vigo_admission_refusals_total[5m]))', "{{code}} {{instance}}"),
        ('sum by (instance) (rate(vigo_handshakes_failed_total[5m]))', "handshakes failed {{instance}}")], 12, 24),
])

HUB = dashboard("vigo-hub", "Vigo Spanner / Hub and raft", [
    panel(1, "Leader", [('vigo_hub_raft_is_leader', "{{instance}}")], 0, 0, w=8, kind="stat"),
    panel(2, "Term", [('max(vigo_hub_raft_term)', "term")], 8, 0, w=8, kind="stat"),
    panel(3, "Pins", [('max(vigo_hub_pins)', "pins")], 16, 0, w=8, kind="stat"),
    panel(4, "Replication: last log, commit and applied index", [
        ('vigo_hub_raft_last_log_index', "last {{instance}}"),
        ('vigo_hub_raft_commit_index', "commit {{instance}}"),
        ('vigo_hub_raft_applied_index', "applied {{instance}}")], 0, 8),
    panel(5, "Admin API calls per second, by code", [
        ('sum by (code) (rate(vigo_hub_admin_requests_total[5m]))', "{{code}}")], 12, 8),
    panel(6, "Admin API latency p99, by route", [
        ('histogram_quantile(0.99, sum by (le, route) (rate(vigo_hub_admin_request_seconds_bucket[5m])))', "{{route}}")],
        0, 16, unit="s"),
    panel(7, "Fan-out latency p99 and spokes missing", [
        ('histogram_quantile(0.99, sum by (le, spoke) (rate(vigo_hub_fanout_seconds_bucket[5m])))', "p99 {{spoke}}"),
        ('sum by (spoke) (increase(vigo_hub_fanout_missing_total[5m]))', "missing {{spoke}}")], 12, 16),
    panel(8, "Snapshot size and hub memory", [
        ('vigo_hub_snapshot_bytes', "snapshot {{instance}}"),
        ('process_resident_memory_bytes{job="vigo-hub"}', "rss {{instance}}")], 0, 24, unit="bytes"),
    panel(9, "Pins per spoke", [('max by (spoke) (vigo_hub_spoke_pins)', "{{spoke}}")], 12, 24),
])

here = pathlib.Path(__file__).parent
for name, board in [("fleet", FLEET), ("spokes", SPOKES), ("hub", HUB)]:
    (here / f"{name}.json").write_text(json.dumps(board, indent=2) + "\n")
