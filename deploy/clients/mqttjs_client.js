// The CELINE integration guide's mqtt.js client (a JWT from Keycloak as the password, an empty
// username), as the container stack test drives it:
//   node mqttjs_client.js subscribe URL TOPIC_FILTER   prints `suback <code>` (QoS, or 128), then each message
//   node mqttjs_client.js publish URL TOPIC PAYLOAD    publishes at QoS 1, prints `published`
// The token comes from MQTT_TOKEN; for mqtts:// the CA certificate from MQTT_CA_FILE. Prints
// `refused <reason>` and exits 2 when the broker or the TLS handshake refuses the connection.
const fs = require('fs');
const mqtt = require('mqtt');

const [mode, url, topic, payload] = process.argv.slice(2);
const token = process.env.MQTT_TOKEN;

const client = mqtt.connect(url, {
  username: '',
  password: token,
  rejectUnauthorized: true,
  ca: process.env.MQTT_CA_FILE ? fs.readFileSync(process.env.MQTT_CA_FILE) : undefined,
  reconnectPeriod: 0,
  connectTimeout: 10000,
});

client.on('error', (err) => {
  console.log(`refused ${err.code || ''} ${err.message}`);
  process.exit(2);
});

client.on('connect', () => {
  if (mode === 'subscribe') {
    client.subscribe(topic, { qos: 1 }, (err, granted, suback) => {
      // SUBACK's codes: the granted QoS, or 128 for a refused filter (then also an error).
      const codes = (suback || (err && err.packet) || {}).granted;
      if (codes) {
        console.log(`suback ${codes[0]}`);
      } else {
        console.log(`refused ${err ? err.message : 'no SUBACK'}`);
        process.exit(2);
      }
    });
  } else {
    client.publish(topic, payload, { qos: 1 }, (err) => {
      console.log(err ? `refused ${err.message}` : 'published');
      client.end(false, () => process.exit(err ? 2 : 0));
    });
  }
});

client.on('message', (t, message) => {
  console.log(`${t}: ${message.toString()}`);
});
