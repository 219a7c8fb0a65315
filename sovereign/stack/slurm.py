"""A Slurm 22.05 cluster of one node with accounting, as plain processes in a fresh directory (no systemd):
munged (as the munge account), MariaDB with its own data directory, slurmdbd, slurmctld and slurmd, each
on a free loopback port. Its GPUs are GRES whose device files are links to /dev/null. For the suite, the
demo's Slurm mode and the production check; Debian's packages, which scripts/setup.sh installs."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from contracts.events import CapacityOffered, JobKind
from services.factory_agent.backends import BackendKind
from services.factory_agent.slurm import allocated_gpus
from services.shared.embedded_broker import free_loopback_port, terminate
from services.shared.settings import REPO_ROOT

CLUSTER_NAME = "sovereign"
# Slurm needs the full set of its daemons and commands, MariaDB and munge: Debian's packages of them.
DEBIAN_PACKAGES = ("slurmctld", "slurmd", "slurmdbd", "slurm-client", "munge", "mariadb-server")
COMMANDS = ("slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "sacctmgr", "munged", "mariadbd")
# What the jobs run here: a script that runs for the job's scaled length (and can be told to fail).
LAUNCH_SCRIPT = REPO_ROOT / "deploy" / "slurm" / "run-job.sh"


def not_installed() -> str | None:
    """What of the cluster's daemons and commands is not installed here, and how to install it."""
    missing = [command for command in COMMANDS if shutil.which(command) is None]
    if not missing:
        return None
    return (
        f"no {', '.join(missing)} here: scripts/setup-production-stack.sh installs Debian's "
        f"{' '.join(DEBIAN_PACKAGES)}"
    )


_DATABASE = "slurm_acct_db"
_DATABASE_USER = "slurm"
_DATABASE_PASSWORD = "local-accounting"  # loopback only, in a directory removed at stop


class LocalSlurm:
    """A throwaway cluster: `partitions` names each partition, all on the one node with `gpus` GPUs."""

    def __init__(self, gpus: int = 8, partitions: tuple[str, ...] = ("gpu",), cpus: int = 32) -> None:
        self.gpus = gpus
        self.partitions = partitions
        self.cpus = cpus
        self.node = socket.gethostname().split(".")[0]
        self.root = Path(tempfile.mkdtemp(prefix="sovereign-slurm-"))
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._ports = {name: free_loopback_port() for name in ("slurmctld", "slurmd", "slurmdbd", "mariadb")}

    @classmethod
    def for_site(cls, offer: CapacityOffered) -> LocalSlurm:
        """A cluster for one site: a partition per pool, named after it, the node with all their GPUs."""
        return cls(
            gpus=sum(pool.gpu_count for pool in offer.pools),
            partitions=tuple(pool.pool_id for pool in offer.pools),
        )

    # --- what clients need ---------------------------------------------------------------------------

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """What a process running Slurm's commands needs to reach this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def agent_env(self, site_id: str) -> dict[str, str]:
        """A factory agent's settings for a site whose pools are this cluster's partitions of the same
        names (for_site), every job kind run by the launch script."""
        return {
            **self.env,
            "SOVEREIGN_FACTORY_SITES": site_id,
            "SOVEREIGN_FACTORY_BACKEND": BackendKind.SLURM.value,
            "SOVEREIGN_SLURM_PARTITIONS": ",".join(f"{name}={name}" for name in self.partitions),
            "SOVEREIGN_SLURM_LAUNCH_SCRIPTS": ",".join(f"{kind.value}={LAUNCH_SCRIPT}" for kind in JobKind),
        }

    def command(self, *args: str, check: bool = True) -> str:
        done = self._run(*args)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def accounted_gpu_seconds(self) -> dict[str, int]:
        """Each job's elapsed seconds times its allocated GPUs, by Slurm job id, from the accounting (sacct).
        By id, not name: slurmdbd holds a just-ended job under the name "allocation" for up to a second
        (measured here under load), before its submission's record catches up."""
        output = self.command(
            "sacct",
            "-n",
            "-X",
            "-P",
            "-S",
            "now-7days",
            "-E",
            "now+1days",
            "-o",
            "JobID,ElapsedRaw,AllocTRES",
        )
        accounted = {}
        for line in output.splitlines():
            job_id, elapsed, tres = line.split("|")
            accounted[job_id] = int(elapsed) * allocated_gpus(tres)
        return accounted

    # --- starting and stopping -----------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        try:
            self._write_config()
            self._start_munge()
            self._start_mariadb(timeout)
            self._start("slurmdbd", self._arguments("slurmdbd"))
            self._wait_for(lambda: self._answers("sacctmgr", "-n", "list", "cluster"), "slurmdbd", timeout)
            self.command("sacctmgr", "-i", "add", "cluster", CLUSTER_NAME)
            self._start("slurmctld", self._arguments("slurmctld"))
            self._start("slurmd", self._arguments("slurmd"))
            self._wait_for(self._node_ready, "slurmd", timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for name in reversed(list(self._processes)):
            terminate(self._processes[name], within=15)
        self._processes.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def restart(self, daemon: str) -> None:
        """Stop one daemon and start it again on the same state (slurmctld, say, mid-run)."""
        terminate(self._processes.pop(daemon), within=15)
        self._start(daemon, self._arguments(daemon))
        self._wait_for(self._node_ready, daemon, 60.0)

    def _arguments(self, daemon: str) -> list[str]:
        """A Slurm daemon in the foreground (-D), a child of ours, on this cluster's configuration."""
        return {
            "slurmdbd": ["slurmdbd", "-D"],  # reads slurmdbd.conf beside SLURM_CONF
            "slurmctld": ["slurmctld", "-D", "-f", str(self.conf)],
            "slurmd": ["slurmd", "-D", "-N", self.node, "-f", str(self.conf)],
        }[daemon]

    def log_tail(self, daemon: str, lines: int = 20) -> str:
        """The end of a daemon's log file and of what it wrote to its output."""
        logs = [self.root / "log" / f"{daemon}.log", self.root / "log" / f"{daemon}.out"]
        return "\n".join(
            line
            for log in logs
            if log.exists()
            for line in log.read_text(errors="replace").splitlines()[-lines:]
        )

    # --- the pieces ----------------------------------------------------------------------------------

    def _write_config(self) -> None:
        for directory in ("etc", "log", "state", "spool", "munge", "mariadb", "dev", "jobs"):
            (self.root / directory).mkdir(parents=True, exist_ok=True)
        for index in range(self.gpus):
            (self.root / "dev" / f"gpu{index}").symlink_to("/dev/null")
        munge_socket = self.root / "munge" / "munge.socket"
        common = f"AuthType=auth/munge\nAuthInfo=socket={munge_socket}\n"
        node = (
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=4096 "
            f"Gres=gpu:{self.gpus} State=UNKNOWN\n"
        )
        partitions = "".join(
            f"PartitionName={name} Nodes={self.node} Default={'YES' if index == 0 else 'NO'} "
            "MaxTime=INFINITE State=UP\n"
            for index, name in enumerate(self.partitions)
        )
        log = self.root / "log"
        self.conf.write_text(
            f"ClusterName={CLUSTER_NAME}\n"
            f"SlurmctldHost={self.node}(127.0.0.1)\n"
            "SlurmUser=root\nSlurmdUser=root\n"
            f"SlurmctldPort={self._ports['slurmctld']}\nSlurmdPort={self._ports['slurmd']}\n"
            f"StateSaveLocation={self.root / 'state'}\nSlurmdSpoolDir={self.root / 'spool'}\n"
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}\nSlurmdPidFile={self.root / 'slurmd.pid'}\n"
            f"SlurmctldLogFile={log / 'slurmctld.log'}\nSlurmdLogFile={log / 'slurmd.log'}\n"
            + common
            + "CredType=cred/munge\n"
            # No cgroups here: processes are tracked by their parent, tasks are not confined.
            "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n"
            "JobAcctGatherType=jobacct_gather/linux\nJobAcctGatherFrequency=5\n"
            "AccountingStorageType=accounting_storage/slurmdbd\n"
            f"AccountingStorageHost=127.0.0.1\nAccountingStoragePort={self._ports['slurmdbd']}\n"
            # The munge socket for slurmdbd's connections (AuthInfo's serves the others).
            f"AccountingStoragePass={munge_socket}\n"
            "AccountingStorageTRES=gres/gpu\nAccountingStorageEnforce=associations,limits,qos\n"
            "GresTypes=gpu\nSelectType=select/cons_tres\nSelectTypeParameters=CR_Core\n"
            "SchedulerType=sched/backfill\nPriorityType=priority/multifactor\nPriorityWeightQOS=10000\n"
            # The configured CPUs, not the machine's: many GPU jobs at once on a 2-core machine.
            "SlurmdParameters=config_overrides\n"
            "ReturnToService=2\nMpiDefault=none\nKillWait=2\nMinJobAge=300\nInactiveLimit=0\n"
            + node
            + partitions
        )
        (self.root / "etc" / "gres.conf").write_text(
            f"NodeName={self.node} Name=gpu File={self.root / 'dev'}/gpu[0-{self.gpus - 1}]\n"
        )
        dbd = self.root / "etc" / "slurmdbd.conf"
        dbd.write_text(
            common
            + f"DbdHost={self.node}\nDbdAddr=127.0.0.1\nDbdPort={self._ports['slurmdbd']}\nSlurmUser=root\n"
            "StorageType=accounting_storage/mysql\nStorageHost=127.0.0.1\n"
            f"StoragePort={self._ports['mariadb']}\nStorageUser={_DATABASE_USER}\n"
            f"StoragePass={_DATABASE_PASSWORD}\nStorageLoc={_DATABASE}\n"
            f"LogFile={log / 'slurmdbd.log'}\nPidFile={self.root / 'slurmdbd.pid'}\n"
        )
        dbd.chmod(0o600)  # slurmdbd refuses a configuration others can read: it holds a password

    def _start_munge(self) -> None:
        """munged refuses root; its key, socket and logs belong to the munge account."""
        munge = pwd.getpwnam("munge")
        directory = self.root / "munge"
        key = directory / "munge.key"
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True)
        for path in (directory, key):
            os.chown(path, munge.pw_uid, munge.pw_gid)
        key.chmod(0o400)
        directory.chmod(0o755)  # clients reach the socket in it
        self.root.chmod(0o755)
        self._start(
            "munged",
            [
                "munged",
                "--foreground",
                f"--key-file={key}",
                f"--socket={directory / 'munge.socket'}",
                f"--pid-file={directory / 'munged.pid'}",
                f"--log-file={directory / 'munged.log'}",
                f"--seed-file={directory / 'munged.seed'}",
            ],
            user=munge.pw_uid,
            group=munge.pw_gid,
        )
        self._wait_for(lambda: (directory / "munge.socket").exists(), "munged", 20.0)

    def _start_mariadb(self, timeout: float) -> None:
        data = self.root / "mariadb"
        socket_path = self.root / "mariadb.sock"
        subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root", "--skip-test-db"],
            check=True,
            capture_output=True,
        )
        self._start(
            "mariadb",
            [
                "mariadbd",
                "--no-defaults",
                f"--datadir={data}",
                f"--socket={socket_path}",
                f"--port={self._ports['mariadb']}",
                "--bind-address=127.0.0.1",
                "--user=root",
                "--innodb-flush-log-at-trx-commit=0",
            ],
        )
        client = ["mariadb", "--no-defaults", f"--socket={socket_path}", "-uroot"]
        self._wait_for(
            lambda: subprocess.run([*client, "-e", "SELECT 1"], capture_output=True).returncode == 0,
            "mariadb",
            timeout,
        )
        grant = (
            f"CREATE USER '{_DATABASE_USER}'@'127.0.0.1' IDENTIFIED BY '{_DATABASE_PASSWORD}'; "
            f"GRANT ALL ON {_DATABASE}.* TO '{_DATABASE_USER}'@'127.0.0.1';"
        )
        subprocess.run([*client, "-e", grant], check=True, capture_output=True)

    def _start(
        self, name: str, arguments: list[str], user: int | None = None, group: int | None = None
    ) -> None:
        log = (self.root / "log" / f"{name}.out").open("ab")
        self._processes[name] = subprocess.Popen(
            arguments,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            user=user,
            group=group,
            extra_groups=[] if user is not None else None,
        )
        log.close()

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """One of Slurm's commands on this cluster, its output kept."""
        return subprocess.run(
            list(args), env={**os.environ, **self.env}, capture_output=True, text=True, timeout=60
        )

    def _answers(self, *command: str) -> bool:
        return self._run(*command).returncode == 0

    def _node_ready(self) -> bool:
        done = self._run("sinfo", "-h", "-N", "-o", "%T")
        return done.returncode == 0 and done.stdout.strip() in {"idle", "mixed", "allocated"}

    def _wait_for(self, ready: Callable[[], bool], name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            process = self._processes.get(name)
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{name} exited ({process.returncode}): {self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} was not ready within {timeout:.0f} s: {self.log_tail(name)}")
            time.sleep(0.2)
