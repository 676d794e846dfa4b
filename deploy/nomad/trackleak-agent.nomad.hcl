# SPDX-License-Identifier: MIT
#
# TrackLeak host agent as a Nomad system job: one allocation on every client node.
#
#   nomad var put nomad/jobs/trackleak-agent api_key=<Elasticsearch API key>   # once
#   nomad job run deploy/nomad/trackleak-agent.nomad.hcl
#
# Driver: exec, not docker (a container image would not see the host's libc and kernel headers
# where the host's processes see them) and not raw_exec (raw_exec runs the task with every power
# of the Nomad client, usually full root, and cannot drop capabilities). exec gives the task its
# own mount namespace and cgroup, and lets us:
#   - share the host's pid namespace (pid_mode = "host"): the agent scans /proc for the host's
#     processes and attaches to them by pid; in a private pid namespace it would see only itself.
#   - keep only the capabilities it needs (cap_drop ALL, then cap_add; the same set and reasons
#     as deploy/systemd/trackleak-agent.service):
#       bpf, perfmon      load the BPF programs, attach uprobes (perf_event_open), read user memory
#       sys_ptrace        /proc/PID/mem and /proc/PID/root of other users' processes
#       dac_read_search   /proc/PID/mem and /proc/PID/environ are owned by the target's user
#       sys_resource      only for kernels before 5.11 (BPF maps charged to RLIMIT_MEMLOCK,
#                         which a Nomad task cannot raise otherwise); remove it on newer kernels.
# The Nomad client must allow what this job asks for, in its agent configuration:
#   plugin "exec" {
#     config { allow_caps = ["audit_write", "chown", "dac_override", "fowner", "fsetid", "kill",
#       "mknod", "net_bind_service", "setfcap", "setgid", "setpcap", "setuid", "sys_chroot",
#       "bpf", "perfmon", "sys_ptrace", "dac_read_search", "sys_resource"] }
#   }
#   client {
#     # the agent must run as uid 0 (its eBPF loader checks the effective uid): exec refuses
#     # root by default (user.denylist = "root,Administrator" for user.checked_drivers).
#     options = { "user.denylist" = "Administrator" }
#     # the exec driver builds the task's root from chroot_env: add the TrackLeak checkout.
#     chroot_env { "/bin" = "/bin", "/etc" = "/etc", "/lib" = "/lib", "/lib64" = "/lib64",
#                  "/sbin" = "/sbin", "/usr" = "/usr", "/opt/trackleak" = "/opt/trackleak" }
#   }
# Each client has TrackLeak installed at /opt/trackleak by the README's own set-up
# (`git clone ... /opt/trackleak && bash /opt/trackleak/scripts/setup.sh`), which also provides
# bcc, the kernel headers (/lib/modules, /usr/src, or the merged tree under .cache) and tracefs.
#
# Checked by tests/unit/test_deploy.py (python-hcl2 parse plus Nomad's rules for a system job).

variable "elasticsearch_url" {
  type        = string
  description = "Elasticsearch base URL (or the original .../_bulk form)"
  default     = "https://elasticsearch.service.consul:9200"
}

variable "elasticsearch_index" {
  type    = string
  default = "trackleak-memory"
}

variable "agent_args" {
  type        = list(string)
  description = "trackleak-agent flags (see README: --interval, --ebpf-window/--ebpf-period, --name, --exclude-name, --cmdline, --user, --cgroup)"
  default     = ["--interval", "10", "--ebpf-window", "10", "--ebpf-period", "60"]
}

job "trackleak-agent" {
  type        = "system"
  datacenters = ["*"]
  node_pool   = "all"
  priority    = 40

  constraint {
    attribute = "${attr.kernel.name}"
    value     = "linux"
  }

  group "agent" {
    # System jobs: one allocation per eligible node; restart in place, never reschedule.
    restart {
      attempts = 5
      interval = "5m"
      delay    = "10s"
      mode     = "delay"
    }

    task "trackleak-agent" {
      driver = "exec"
      user   = "root"

      config {
        command  = "/opt/trackleak/.venv/bin/trackleak-agent"
        args     = concat(var.agent_args, ["--host-name", "${node.unique.name}"])
        pid_mode = "host"
        cap_drop = ["all"]
        cap_add  = ["bpf", "perfmon", "sys_ptrace", "dac_read_search", "sys_resource"]
      }

      env {
        PYTHONUNBUFFERED         = "1"
        ENABLE_ELASTICSEARCH     = "1"
        ELASTICSEARCH_URL        = var.elasticsearch_url
        ELASTICSEARCH_INDEX      = var.elasticsearch_index
        ELASTICSEARCH_SSL_VERIFY = "true"
        # NOMAD_JOB_NAME is set by Nomad itself (the agent's own job); the processes it watches
        # keep theirs, read from their environment.
      }

      # Credentials (and an optional CA) from Nomad Variables: the job's workload identity may
      # read nomad/jobs/trackleak-agent. Rendered into the task's private secrets/ directory and
      # exported as environment variables; nothing secret is written in this file.
      #   nomad var put nomad/jobs/trackleak-agent api_key=... [ca_pem=@ca.pem]
      #   (or username=... password=... instead of api_key)
      template {
        destination = "secrets/elasticsearch.env"
        env         = true
        change_mode = "restart"
        perms       = "0400"
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/trackleak-agent" }}
          {{- if .api_key }}
          ELASTICSEARCH_API_KEY={{ .api_key }}
          {{- end }}
          {{- if .username }}
          ELASTICSEARCH_USERNAME={{ .username }}
          ELASTICSEARCH_PASSWORD={{ .password }}
          {{- end }}
          {{- if .ca_pem }}
          ELASTICSEARCH_CA_FILE={{ env "NOMAD_SECRETS_DIR" }}/es-ca.pem
          {{- end }}
          {{- end }}
          EOT
      }

      template {
        destination = "secrets/es-ca.pem"
        change_mode = "restart"
        perms       = "0400"
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/trackleak-agent" }}{{ with .ca_pem }}{{ . }}{{ end }}{{ end }}
          EOT
      }

      # bcc (LLVM) needs ~150-250 MiB while compiling at start; half a CPU is the bound.
      resources {
        cpu        = 500
        memory     = 384
        memory_max = 512
      }

      kill_signal  = "SIGTERM"
      kill_timeout = "30s"

      logs {
        max_files     = 5
        max_file_size = 10
      }
    }
  }
}
