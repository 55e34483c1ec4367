"""Writes flows.json from the function sources in src/ (edit those, then run this)."""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
src = {p.stem: p.read_text() for p in (HERE / "src").glob("*.js")}
tab = "bench-tab"
flows = [
    {"id": tab, "type": "tab", "label": "hyfleet peer"},
    {
        "id": "broker", "type": "mqtt-broker", "name": "bench broker", "broker": "127.0.0.1",
        "port": "${MQTT_PORT}", "clientid": "${MQTT_CLIENT_ID}", "autoConnect": True, "usetls": False,
        "protocolVersion": "4", "keepalive": "30", "cleansession": False, "autoUnsubscribe": False,
        "birthTopic": "", "closeTopic": "", "willTopic": "",
    },
    {
        "id": "in", "type": "mqtt in", "z": tab, "name": "telemetry", "topic": "${TOPIC}", "qos": "1",
        "datatype": "utf8", "broker": "broker", "nl": False, "rap": True, "rh": 0, "inputs": 0,
        "x": 120, "y": 100, "wires": [["checks"]],
    },
    {
        "id": "checks", "type": "function", "z": tab, "name": "checks and rules", "func": src["checks"],
        "outputs": 2, "timeout": 0, "noerr": 0, "initialize": "", "finalize": "", "libs": [],
        "x": 320, "y": 100, "wires": [["join"], ["alerts"]],
    },
    {
        "id": "join", "type": "join", "z": tab, "name": "2,000 rows or 200 ms", "mode": "custom",
        "build": "array", "property": "payload", "propertyType": "msg", "key": "topic", "joiner": "\\n",
        "joinerType": "str", "accumulate": False, "timeout": "0.2", "count": "2000", "reduceRight": False,
        "reduceExp": "", "reduceInit": "", "reduceInitType": "", "reduceFixup": "", "useparts": False,
        "x": 540, "y": 80, "wires": [["copy"]],
    },
    {
        "id": "copy", "type": "function", "z": tab, "name": "COPY", "func": src["copy"], "outputs": 0,
        "timeout": 0, "noerr": 0, "initialize": "", "finalize": "", "libs": [], "x": 720, "y": 80, "wires": [],
    },
    {
        "id": "alerts", "type": "function", "z": tab, "name": "alerts and webhook", "func": src["alerts"],
        "outputs": 0, "timeout": 0, "noerr": 0, "initialize": "", "finalize": "", "libs": [],
        "x": 560, "y": 140, "wires": [],
    },
]
(HERE / "flows.json").write_text(json.dumps(flows, indent=2) + "\n")
