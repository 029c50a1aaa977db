# Extra link flags of the cpu backend plugin.
LIBS_cpu := -lhwloc
# The bench (tools/bench) loads its peers with dlopen.
LIBS_TOOLS += -ldl
