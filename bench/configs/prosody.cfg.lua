-- Prosody 0.12 under test. Template: run.sh fills in the @...@
-- placeholders (run directory, port, log level). Run as the prosody user
-- (Prosody refuses root), in the foreground:
--   setpriv --reuid=prosody --regid=prosody --init-groups \
--     prosody --config RUN/prosody/prosody.cfg.lua -F

pidfile = "@RUN@/prosody/prosody.pid"
data_path = "@RUN@/prosody/data"
log = {
	{ levels = { min = "@LOGLEVEL@" }; to = "file"; filename = "@RUN@/prosody/prosody.log" };
}

-- Loopback only, STARTTLS on one port; no s2s, no HTTP, no components.
interfaces = { "127.0.0.1" }
c2s_ports = { @C2S_PORT@ }
c2s_direct_tls_ports = { }
s2s_ports = { }
http_ports = { }
https_ports = { }
proxy65_ports = { }

c2s_require_encryption = true
allow_unencrypted_plain_auth = false
authentication = "internal_hashed"   -- SCRAM-SHA-1 (and PLAIN over TLS)
storage = "internal"
-- SCRAM iteration count for new accounts: Prosody's default is 10000,
-- ejabberd and Tributary use 4096; equal here so that the generator's
-- client-side PBKDF2 cost per login is the same for every server.
default_iteration_count = 4096

-- Same limit as the others (this is Prosody's 0.12 default, stated here).
c2s_stanza_size_limit = 262144

-- No "limits" module: Prosody's per-connection rate shaping (Debian's
-- default config enables it with rate = "10kb/s" for c2s) is off, so no
-- client is throttled.
modules_enabled = {
	"roster";
	"saslauth";
	"tls";
	"disco";
	"ping";
	"carbons";
	"smacks";   -- XEP-0198, built into 0.12
	"posix";    -- pidfile; no daemonizing (started with -F)
}
modules_disabled = { "s2s" }

certificates = "@RUN@/prosody"  -- directory it indexes; the ssl block below is what is used
ssl = {
	certificate = "@RUN@/prosody/cert.pem";
	key = "@RUN@/prosody/key.pem";
}

VirtualHost "localhost"
