-- Prosody 0.12 for experiments with xmpptrack, for docker-compose.yml.
-- It has the settings of the test harness (integration/prosody): stream
-- management with resumption, Multi-User Chat with stanza ids, and no rate
-- limits, so that what you measure is the client and not a throttle.
--
-- STARTTLS needs a certificate for localhost and conference.localhost in
-- integration/docker/certs (see docker-compose.yml).

daemonize = false
pidfile = "/var/run/prosody/prosody.pid"
data_path = "/var/lib/prosody"
certificates = "certs"
log = { { levels = { min = "info" }; to = "console"; } }

c2s_ports = { 5222 }
modules_disabled = { "s2s", "offline" }
modules_enabled = { "roster", "saslauth", "tls", "disco", "ping", "smacks", "admin_shell" }

c2s_require_encryption = false
allow_unencrypted_plain_auth = false
authentication = "internal_hashed"
storage = "internal"
ssl = { key = "/etc/prosody/certs/localhost.key"; certificate = "/etc/prosody/certs/localhost.crt"; }

-- Seconds a broken stream management session waits to be resumed.
smacks_hibernation_time = 60

VirtualHost "localhost"

Component "conference.localhost" "muc"
	modules_enabled = { "muc_mam" }
	muc_room_locking = false
	restrict_room_creation = false
