# siptrace: set-up, demo, tests and benchmarks. `make demo` and `make test` do all set-up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEBIAN_PACKAGES := clickhouse-server clickhouse-client tshark tcpdump sqlite3 sip-tester kamailio kamailio-python3-modules \
	kamailio-sqlite-modules kamailio-mysql-modules kamailio-postgres-modules sngrep \
	chromium chromium-driver
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test bench venv debian-packages databases clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# Installs only what is missing; tshark is told not to ask about non-root capture.
debian-packages:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  echo "wireshark-common wireshark-common/install-setuid boolean false" | $(SUDO) debconf-set-selections; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# The production backends the tests talk to: started when they are down.
databases:
	@pg_isready -q -h 127.0.0.1 -p 5432 || { \
	  $(SUDO) pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start; \
	  for i in $$(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done; }
	@mysqladmin -h 127.0.0.1 -u root ping >/dev/null 2>&1 || { \
	  $(SUDO) start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd; \
	  for i in $$(seq 30); do mysqladmin -h 127.0.0.1 -u root ping >/dev/null 2>&1 && break; sleep 1; done; }

demo: venv
	rm -f siptrace.db
	$(BIN)/siptrace replay pcaps/kamailio-udp.pcap --db-url sqlite:///siptrace.db --proxy 127.0.0.1:5060
	$(BIN)/siptrace calls --db-url sqlite:///siptrace.db
	$(BIN)/siptrace flow --db-url sqlite:///siptrace.db 1-28455@127.0.0.1

test: venv debian-packages databases
	$(BIN)/python -m pytest -q

bench: venv debian-packages databases
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) siptrace.db .pytest_cache .hypothesis test-artifacts
