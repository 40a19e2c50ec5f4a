# Workers beyond this machine: over SSH (Distributed's `addprocs(machines)`)
# and as the tasks of a Slurm step (SlurmClusterManager.jl's
# `SlurmManager`). The library's launchers do the work (one ssh per host,
# one srun step per call) on a thread of their own; this task waits for the
# future (`await_ids`). Julia workers run the program and arguments of a
# local `addprocs(n)` (`worker_command`, `worker_env`), so a host that
# shares this file system (or has Julia and the project at the same paths)
# runs them as they are.

# ---------------------------------------------------------------- helpers

"A C string argument: refuses a NUL inside (C would cut the string there)."
function c_string(what::AbstractString, s)
    str = String(s)
    Base.containsnul(str) && throw(ArgumentError("addprocs: $what contains a NUL character: $(repr(str))"))
    str
end

c_strings(what, v) = String[c_string(what, x) for x in v]

"A NULL-terminated array of pointers to `v`'s strings (keep `v` preserved while it is used)."
c_array(v::Vector{String}) = push!(Ptr{UInt8}[pointer(x) for x in v], C_NULL)

c_or_null(s::Union{Nothing,String}) = s === nothing ? Ptr{UInt8}(C_NULL) : pointer(s)

"A startup timeout in seconds (`nothing`: the cluster's) as the C options' milliseconds (0: the cluster's)."
function timeout_ms(secs)
    secs === nothing && return UInt32(0)
    secs > 0 || throw(ArgumentError("addprocs: a startup timeout must be positive, got $secs"))
    UInt32(clamp(round(Int64, secs * 1000), 1, typemax(UInt32)))
end

"""
    listen_beyond_loopback()

A head not started yet starts listening on every interface (unless
`LIBCLUSTER_LISTEN` says where), so that other hosts reach it: the default
loopback would refuse them. A running head keeps its address.
"""
function listen_beyond_loopback()
    RT.ctx == C_NULL || return
    isempty(get(ENV, "LIBCLUSTER_LISTEN", "")) || return
    init(listen_host = "0.0.0.0")
    nothing
end

"This head's listening address, host and port (`cluster_address`)."
function head_address()
    a = CAPI.read_string(CAPI.cluster_address, context())
    i = findlast(':', a)
    host = a[1:prevind(a, i)]
    (startswith(host, "[") ? host[2:end-1] : host, parse(Int, a[i+1:end]))
end

is_wildcard(host::AbstractString) = host == "0.0.0.0" || host == "::"

# The library's reason when the head listens on loopback, with what to do in Julia.
function with_listen_hint(msg::AbstractString)
    occursin("which other hosts cannot reach", msg) || return msg
    msg * " (in Julia: LibCluster.init(listen_host = \"0.0.0.0\") before the cluster's first use, " *
          "LIBCLUSTER_LISTEN=0.0.0.0, or tunnel = true)"
end

"""
    warnings_shown(f, on::Bool)

Runs `f()` with the library's warnings on standard error when `on` (a
tolerated launch failure is reported only as a warning of the library, as
Distributed prints a failed machine's exception and goes on).
"""
function warnings_shown(f::F, on::Bool) where {F}
    (on && LOG_LEVEL[] < CAPI.CLUSTER_LOG_WARN) || return f()
    ctx = context()
    CAPI.cluster_set_log_level(ctx, CAPI.CLUSTER_LOG_WARN)
    try
        f()
    finally
        CAPI.cluster_set_log_level(ctx, LOG_LEVEL[])
    end
end

# ------------------------------------------------------------------- SSH

"""
    SSHManager(machines)

The manager of `addprocs(machines)` (what worker-starting callbacks
receive): Distributed's machine specs, a host's counts added up as
Distributed does, in the order first given.
"""
struct SSHManager <: ClusterManager
    machines::Vector{Pair{String,Union{Int,Symbol}}}
    SSHManager(machines::AbstractVector) = new(merge_machines(machines))
end

Base.show(io::IO, m::SSHManager) = print(io, "SSHManager(machines=", Dict(m.machines), ")")

function merge_machines(machines)
    merged = Pair{String,Union{Int,Symbol}}[]
    for m in machines
        spec, cnt = if m isa Tuple
            length(m) == 2 || throw(ArgumentError("addprocs: a machine is a spec or (spec, count), got $(repr(m))"))
            m
        else
            m, 1
        end
        spec isa AbstractString ||
            throw(ArgumentError("addprocs: a machine spec is a string \"[user@]host[:port] [bind_addr]\", got $(repr(spec))"))
        if cnt isa Symbol
            cnt === :auto || throw(ArgumentError("addprocs: machine $(repr(spec)): count is an integer or :auto, got :$cnt"))
        elseif cnt isa Integer
            cnt >= 0 || throw(ArgumentError("addprocs: machine $(repr(spec)): count must be >= 0, got $cnt"))
        else
            throw(ArgumentError("addprocs: machine $(repr(spec)): count is an integer or :auto, got $(repr(cnt))"))
        end
        key = c_string("a machine spec", spec)
        i = findfirst(p -> first(p) == key, merged)
        # As Distributed's SSHManager: counts of one host add up, :auto replaces.
        if i === nothing
            push!(merged, key => (cnt isa Integer ? Int(cnt) : cnt))
        else
            old = last(merged[i])
            merged[i] = key => (cnt isa Integer ? (old isa Int ? old + Int(cnt) : Int(cnt)) : cnt)
        end
    end
    merged
end

"""
    addprocs(machines; tunnel=false, multiplex=true, sshflags=``, max_parallel=10, ssh="ssh",
             exename=<this julia>, exeflags=``, dir=pwd(), env=[], topology=:all_to_all, lazy=true,
             enable_threaded_blas=false, tolerate_failures=false, startup_timeout=nothing,
             worker_listen=nothing, head_addr=nothing) -> Vector{Int}

Starts Julia workers on other hosts over SSH, as Distributed's
`addprocs(machines)`, and returns their ids once every one has joined.
`machines` holds specs `"[user@]host[:port]"` (a `" bind_addr"` after it is
accepted and ignored: each worker tells the address it is reached at) or
tuples `(spec, count)`, `count` an integer or `:auto` (the host's cores).

The library runs one `ssh` per host (at most `max_parallel` connecting at
once), with connection multiplexing unless `multiplex=false`; the cookie
goes on ssh's standard input. Workers run this process's Julia (`exename`)
with its flags, project and load path, as `addprocs(n)` does, in `dir` with
`env`: the hosts need Julia and this package at the same paths (a shared
file system). A head not started yet listens on every interface; with
`tunnel=true` workers reach the head through an ssh forward instead (the
head may listen on loopback; workers then listen on their loopback, so use
`topology=:master_worker`).

A host that fails (unreachable, key refused, no julia) is named in the
`ErrorException`, with ssh's reason; no worker of the call is left. With
`tolerate_failures=true` the workers that joined are returned and each
failure is logged. `startup_timeout` (seconds) bounds the start (default:
the cluster's, 60 s); `worker_listen` is where workers listen
(`"0.0.0.0:9000-9100"` for a port range); `head_addr` the head's
address as the hosts reach it.
"""
addprocs(machines::AbstractVector; kwargs...) = addprocs(SSHManager(machines); kwargs...)

function addprocs(manager::SSHManager; tunnel::Bool = false, multiplex::Bool = true, ssh::AbstractString = "ssh",
                  sshflags = ``, max_parallel::Integer = 10, shell::Symbol = :posix, dir::AbstractString = pwd(),
                  exename = nothing, exeflags = ``, env = [], topology = nothing, lazy::Bool = true,
                  enable_threaded_blas::Bool = false, callback_warning_interval::Real = 10,
                  tolerate_failures::Bool = false, startup_timeout::Union{Nothing,Real} = nothing,
                  worker_listen::Union{Nothing,AbstractString} = nothing,
                  head_addr::Union{Nothing,AbstractString} = nothing, kwargs...)
    # As Distributed: a misspelt keyword is an error, not ignored.
    isempty(kwargs) || throw(ArgumentError("Invalid keyword argument $(first(keys(kwargs)))"))
    shell === :posix || throw(ArgumentError("addprocs: the hosts' login shell runs `sh -c`: only shell=:posix, not :$shell"))
    max_parallel >= 1 || throw(ArgumentError("addprocs: max_parallel must be >= 1"))
    if !isempty(STARTING_CBS)
        params = Dict{Symbol,Any}(:machines => manager.machines, :tunnel => tunnel, :multiplex => multiplex,
                                  :ssh => ssh, :sshflags => sshflags, :max_parallel => max_parallel, :shell => shell,
                                  :dir => dir, :exename => exename, :exeflags => exeflags, :env => env,
                                  :topology => topology, :lazy => lazy, :enable_threaded_blas => enable_threaded_blas,
                                  :callback_warning_interval => callback_warning_interval,
                                  :tolerate_failures => tolerate_failures, :startup_timeout => startup_timeout,
                                  :worker_listen => worker_listen, :head_addr => head_addr)
    else
        params = nothing
    end
    p = SSHParams(tunnel, multiplex, c_string("ssh", ssh), c_strings("sshflags", flag_strings(sshflags)),
                  Int(max_parallel), c_string("dir", dir), exename === nothing ? nothing : c_string("exename", exename),
                  c_strings("exeflags", flag_strings(exeflags)), c_strings("env", env_strings(env)),
                  topology === nothing ? nothing : Symbol(topology), lazy, enable_threaded_blas,
                  Float64(callback_warning_interval), tolerate_failures,
                  startup_timeout === nothing ? nothing : Float64(startup_timeout),
                  worker_listen === nothing ? nothing : c_string("worker_listen", worker_listen),
                  head_addr === nothing ? nothing : c_string("head_addr", head_addr))
    ssh_addprocs(manager, p, params)
end

"The keywords of `addprocs(machines)`, checked and made concrete (one compiled path for all)."
struct SSHParams
    tunnel::Bool
    multiplex::Bool
    ssh::String
    sshflags::Vector{String}
    max_parallel::Int
    dir::String
    exename::Union{Nothing,String}
    exeflags::Vector{String}
    env::Vector{String}
    topology::Union{Nothing,Symbol}
    lazy::Bool
    enable_threaded_blas::Bool
    callback_warning_interval::Float64
    tolerate_failures::Bool
    startup_timeout::Union{Nothing,Float64}
    worker_listen::Union{Nothing,String}
    head_addr::Union{Nothing,String}
end

function ssh_addprocs(manager::SSHManager, p::SSHParams, params::Union{Nothing,Dict{Symbol,Any}})
    p.tunnel || listen_beyond_loopback()
    check_head()
    topo = p.topology === nothing ? DEFAULT_TOPOLOGY[] : p.topology
    if params !== nothing
        params[:topology] = topo
        run_callbacks("worker-starting", STARTING_CBS, [(manager, params)]; warn_every = p.callback_warning_interval)
    end
    machines = filter(m -> last(m) !== 0, manager.machines)
    isempty(machines) && return Int[]
    program, args = worker_command(p.exename, p.exeflags)
    env = worker_env(p.env; threaded_blas = p.enable_threaded_blas)
    start_workers(() -> launch_ssh(machines, program, args, env, p), topo, p.lazy, p.callback_warning_interval)
end

function launch_ssh(machines::Vector{Pair{String,Union{Int,Symbol}}}, program::String, args::Vector{String},
                    env::Vector{String}, p::SSHParams)
    ctx = context()
    specs = String[first(m) for m in machines]
    cms = CAPI.Machine[CAPI.Machine(pointer(s), c === :auto ? CAPI.CLUSTER_COUNT_AUTO : Int32(c))
                       for (s, c) in zip(specs, last.(machines))]
    argv = c_strings("exeflags", args)
    envs = c_strings("env", env)
    prog = c_string("exename", program)
    flagp, argvp, envp = c_array(p.sshflags), c_array(argv), c_array(envs)
    init = CAPI.ssh_options_init()
    opts = Ref(CAPI.SshOptions(init.struct_size, pointer(p.ssh), pointer(flagp), Csize_t(p.max_parallel), p.multiplex,
                               p.tunnel, p.tolerate_failures, c_or_null(p.head_addr), c_or_null(p.worker_listen),
                               pointer(prog), pointer(argvp), pointer(p.dir), pointer(envp), timeout_ms(p.startup_timeout)))
    # Everything is copied before cluster_addprocs_ssh_async returns.
    try
        GC.@preserve specs cms argv envs prog p flagp argvp envp opts warnings_shown(p.tolerate_failures) do
            await_ids(out -> CAPI.cluster_addprocs_ssh_async(ctx, cms, Csize_t(length(cms)), opts, out))
        end
    catch err
        err isa ErrorException || rethrow()
        error(with_listen_hint(err.msg))
    end
end

# ----------------------------------------------------------------- Slurm

"""
    SlurmManager(; launch_timeout=60.0, srun_post_exit_sleep=0.01, srun_args=``, srun="srun")

LibCluster's Slurm manager (not Distributed's, nor SlurmClusterManager.jl's
type; the same use): inside an allocation (`salloc`, `sbatch`: `SLURM_JOB_ID`
and `SLURM_NTASKS` set, else an error as there), `addprocs(SlurmManager())`
starts `SLURM_NTASKS` Julia workers as the tasks of one `srun` step. Workers
connect back to the head; their output goes to the head's. The step's tasks
end with it (`scancel`) and with the head.

- `launch_timeout`: seconds the workers have to start and join.
- `srun_args`: extra `srun` arguments (a `Cmd`, string or vector), e.g.
  `` `--cpus-per-task=2` `` (LibCluster's; SlurmClusterManager.jl takes none).
- `srun`: the srun program.
- `srun_post_exit_sleep`: accepted for SlurmClusterManager.jl's sake, unused
  (the library reaps srun itself).
"""
struct SlurmManager <: ClusterManager
    jobid::Int
    ntasks::Int
    launch_timeout::Float64
    srun_post_exit_sleep::Float64
    srun_args::Vector{String}
    srun::String
    function SlurmManager(; launch_timeout::Real = 60.0, srun_post_exit_sleep::Real = 0.01, srun_args = ``,
                          srun::AbstractString = "srun")
        jobid = get(ENV, "SLURM_JOB_ID", get(ENV, "SLURM_JOBID", nothing))
        jobid === nothing && error("SlurmManager must be constructed inside a slurm allocation environment.\n" *
                                   "SLURM_JOB_ID or SLURM_JOBID must be defined.")
        ntasks = get(ENV, "SLURM_NTASKS", nothing)
        ntasks === nothing && error("SlurmManager must be constructed inside a slurm environment with a specified " *
                                    "number of tasks.\nSLURM_NTASKS must be defined.")
        launch_timeout > 0 || throw(ArgumentError("SlurmManager: launch_timeout must be positive"))
        new(parse(Int, jobid), parse(Int, ntasks), Float64(launch_timeout), Float64(srun_post_exit_sleep),
            c_strings("srun_args", flag_strings(srun_args)), c_string("srun", srun))
    end
end

"""
    addprocs(manager::SlurmManager; dir=pwd(), exename=<this julia>, exeflags=``, env=[],
             topology=:all_to_all, lazy=true, enable_threaded_blas=false,
             worker_listen=nothing, head_addr=nothing) -> Vector{Int}

Starts `manager.ntasks` Julia workers as the tasks of one srun step (in
`dir`: srun's `--chdir`), with this process's Julia, flags, project and load
path, and returns their ids once every one has joined. A head not started
yet listens on every interface and tells the tasks its host name.
Keywords SlurmClusterManager.jl does not support are warned about and
ignored, as there.
"""
function addprocs(manager::SlurmManager; dir::AbstractString = pwd(), exename = nothing, exeflags = ``, env = [],
                  topology = nothing, lazy::Bool = true, enable_threaded_blas::Bool = false,
                  callback_warning_interval::Real = 10, worker_listen::Union{Nothing,AbstractString} = nothing,
                  head_addr::Union{Nothing,AbstractString} = nothing, kwargs...)
    for (k, v) in kwargs
        @warn "LibCluster's SlurmManager does not support this kwarg: $(k)" kwarg = k value = v
    end
    params = isempty(STARTING_CBS) ? nothing :
             Dict{Symbol,Any}(:dir => dir, :exename => exename, :exeflags => exeflags, :env => env,
                              :topology => topology, :lazy => lazy, :enable_threaded_blas => enable_threaded_blas,
                              :callback_warning_interval => callback_warning_interval,
                              :worker_listen => worker_listen, :head_addr => head_addr)
    p = SlurmParams(c_string("dir", dir), exename === nothing ? nothing : c_string("exename", exename),
                    c_strings("exeflags", flag_strings(exeflags)), c_strings("env", env_strings(env)),
                    topology === nothing ? nothing : Symbol(topology), lazy, enable_threaded_blas,
                    Float64(callback_warning_interval),
                    worker_listen === nothing ? nothing : c_string("worker_listen", worker_listen),
                    head_addr === nothing ? nothing : c_string("head_addr", head_addr))
    slurm_addprocs(manager, p, params)
end

"The keywords of `addprocs(::SlurmManager)`, checked and made concrete."
struct SlurmParams
    dir::String
    exename::Union{Nothing,String}
    exeflags::Vector{String}
    env::Vector{String}
    topology::Union{Nothing,Symbol}
    lazy::Bool
    enable_threaded_blas::Bool
    callback_warning_interval::Float64
    worker_listen::Union{Nothing,String}
    head_addr::Union{Nothing,String}
end

function slurm_addprocs(manager::SlurmManager, p::SlurmParams, params::Union{Nothing,Dict{Symbol,Any}})
    listen_beyond_loopback()
    check_head()
    topo = p.topology === nothing ? DEFAULT_TOPOLOGY[] : p.topology
    if params !== nothing
        params[:topology] = topo
        run_callbacks("worker-starting", STARTING_CBS, [(manager, params)]; warn_every = p.callback_warning_interval)
    end
    manager.ntasks == 0 && return Int[]
    program, args = worker_command(p.exename, p.exeflags)
    env = worker_env(p.env; threaded_blas = p.enable_threaded_blas)
    head = p.head_addr
    if head === nothing
        # On a wildcard the library would hand the tasks 0.0.0.0, which
        # reaches only this machine: the nodes get this host's name.
        host, port = head_address()
        is_wildcard(host) && (head = "$(gethostname()):$port")
    end
    start_workers(() -> launch_slurm(manager, program, args, env, p, head), topo, p.lazy, p.callback_warning_interval)
end

function launch_slurm(manager::SlurmManager, program::String, args::Vector{String}, env::Vector{String},
                      p::SlurmParams, head::Union{Nothing,String})
    ctx = context()
    srun_args = String[c_string("dir", "--chdir=" * p.dir); manager.srun_args]
    argv = c_strings("exeflags", args)
    envs = c_strings("env", env)
    prog = c_string("exename", program)
    srun = manager.srun
    srunp, argvp, envp = c_array(srun_args), c_array(argv), c_array(envs)
    init = CAPI.slurm_options_init()
    # srun itself inherits this process's environment (SLURM_CONF & co.): no srun_env.
    opts = Ref(CAPI.SlurmOptions(init.struct_size, pointer(srun), pointer(srunp), Ptr{Ptr{UInt8}}(C_NULL),
                                 pointer(prog), pointer(argvp), pointer(envp), c_or_null(p.worker_listen),
                                 c_or_null(head), timeout_ms(manager.launch_timeout)))
    GC.@preserve srun_args argv envs prog srun p head srunp argvp envp opts begin
        await_ids(out -> CAPI.cluster_addprocs_slurm_async(ctx, Csize_t(manager.ntasks), opts, out))
    end
end
