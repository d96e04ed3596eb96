from gateway.service import GatewayServer
from services.core.service import run

run(GatewayServer.from_env)
