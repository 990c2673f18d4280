"""The CELINE integration guide's paho-mqtt client (a JWT from Keycloak as the password, an
empty username), as the container stack test drives it:
    python3 paho_client.py subscribe HOST PORT TOPIC_FILTER   prints `suback <code>` (QoS, or 128), then each message
    python3 paho_client.py publish HOST PORT TOPIC PAYLOAD    publishes at QoS 1, prints `published`
The token comes from MQTT_TOKEN; with MQTT_CA_FILE set it connects over TLS, trusting that CA.
Prints `refused <reason>` and exits 2 when the broker refuses the connection.
"""
import os
import sys

import paho.mqtt.client as mqtt

mode, host, port, topic = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

client = mqtt.Client()
client.username_pw_set(username="", password=os.environ["MQTT_TOKEN"])
if os.environ.get("MQTT_CA_FILE"):
    client.tls_set(ca_certs=os.environ["MQTT_CA_FILE"])


def on_connect(client, userdata, flags, rc):
    if rc != 0:
        print(f"refused {mqtt.connack_string(rc)}", flush=True)
        os._exit(2)
    if mode == "subscribe":
        client.subscribe(topic, qos=1)
    else:
        client.publish(topic, payload=sys.argv[5], qos=1)


def on_publish(client, userdata, mid):
    print("published", flush=True)
    client.disconnect()


def on_subscribe(client, userdata, mid, granted_qos):
    print(f"suback {granted_qos[0]}", flush=True)


def on_message(client, userdata, message):
    print(f"{message.topic}: {message.payload.decode()}", flush=True)


client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message
client.on_publish = on_publish
try:
    client.connect(host, port)
except Exception as err:  # the TLS handshake or the TCP connection
    print(f"refused {err}", flush=True)
    sys.exit(2)
client.loop_forever()
