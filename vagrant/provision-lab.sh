#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Vagrant provisioner, second step (as root): what a lab needs beyond the developer set-up that
# provision.sh did with scripts/setup.sh: Elasticsearch on loopback, two demo services (one
# leaking), and the host agent installed from deploy/systemd exactly as the README describes.
set -euo pipefail

REPO=/trackleak
ES_VERSION="${ES_VERSION:-8.17.4}"
ES_HOME=/opt/elasticsearch
ES_ZIP_URL="https://repo1.maven.org/maven2/org/elasticsearch/distribution/integ-test-zip/elasticsearch/${ES_VERSION}/elasticsearch-${ES_VERSION}.zip"

say() { printf '[lab] %s\n' "$*"; }

# --- Elasticsearch (the integration-test distribution from Maven Central, on Debian's JDK) -------
if [[ ! -x $ES_HOME/bin/elasticsearch ]]; then
    say "installing Elasticsearch $ES_VERSION and a JDK"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        openjdk-17-jre-headless curl unzip
    tmp="$(mktemp -d)"
    curl -fsSL -o "$tmp/es.zip" "$ES_ZIP_URL"
    unzip -q "$tmp/es.zip" -d "$tmp"
    mv "$tmp/elasticsearch-$ES_VERSION" "$ES_HOME"
    rm -rf "$tmp"
    id elasticsearch >/dev/null 2>&1 || useradd --system --home-dir "$ES_HOME" --shell /usr/sbin/nologin elasticsearch
    chown -R elasticsearch: "$ES_HOME"
fi
cat >/etc/systemd/system/trackleak-lab-elasticsearch.service <<UNIT
[Unit]
Description=Elasticsearch for the TrackLeak lab (loopback only)
After=network.target

[Service]
User=elasticsearch
Environment=ES_JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64
Environment=ES_JAVA_OPTS=-Xms512m -Xmx512m
ExecStart=$ES_HOME/bin/elasticsearch -E network.host=127.0.0.1 -E discovery.type=single-node
LimitNOFILE=65535
Restart=on-failure

[Install]
WantedBy=multi-user.target
UNIT

# --- two demo services: "orders" leaks (preloaded: the shim route), "billing" does not (eBPF) ---
shim="$(sudo -u vagrant "$REPO/.venv/bin/trackleak" where)"
for svc in orders billing; do
    leak="" preload=""
    if [[ $svc == orders ]]; then leak="--leak" preload="Environment=LD_PRELOAD=$shim"; fi
    cat >"/etc/systemd/system/trackleak-demo-$svc.service" <<UNIT
[Unit]
Description=TrackLeak lab demo service $svc

[Service]
User=vagrant
$preload
Environment=TRACKLEAK_QUIET=1
Environment=ELASTICSEARCH_INDEX=trackleak-memory
Environment=NOMAD_JOB_NAME=demo-$svc
ExecStart=/usr/bin/python3 $REPO/vagrant/demo_service.py --name $svc $leak
Restart=on-failure

[Install]
WantedBy=multi-user.target
UNIT
done

# --- the host agent, from the repository's own deploy/systemd files -----------------------------
ln -sfn "$REPO" /opt/trackleak
install -m 0644 "$REPO/deploy/systemd/trackleak-agent.service" /etc/systemd/system/
install -d -m 0755 /etc/trackleak
sed -e 's|^ELASTICSEARCH_URL=.*|ELASTICSEARCH_URL=http://127.0.0.1:9200|' \
    -e 's|^ELASTICSEARCH_CA_FILE=.*|ELASTICSEARCH_CA_FILE=|' \
    "$REPO/deploy/systemd/agent.env" >/etc/trackleak/agent.env
if [[ ! -e /etc/trackleak/secrets.env ]]; then
    install -m 0600 -o root -g root "$REPO/deploy/systemd/secrets.env.example" /etc/trackleak/secrets.env
fi

systemctl daemon-reload
systemctl enable --now trackleak-lab-elasticsearch trackleak-demo-orders trackleak-demo-billing
# Started last: it finds the two services already running.
systemctl enable trackleak-agent
systemctl restart trackleak-agent || say "the agent did not start: journalctl -u trackleak-agent"
say "done: curl -s 'http://127.0.0.1:9200/trackleak-memory/_search?q=job_name:demo-orders&size=3'"
