from services.adapter.service import AdapterServer
from services.core.service import run

run(AdapterServer.from_env)
