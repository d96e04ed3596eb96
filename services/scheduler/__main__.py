from services.core.service import run
from services.scheduler.service import SchedulerServer

run(SchedulerServer.from_env)
