from services.core.service import run
from services.metering.service import MeteringServer

run(MeteringServer.from_env)
