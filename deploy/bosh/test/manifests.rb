# Checks the manifests with their ops files, as `bosh deploy -o ... -v ...`
# would combine them, against the jobs' specs: jobs exist, properties are
# declared and the required ones set, etcd is reachable for every pgcell job,
# every ((variable)) is generated or passed. Used by render.rb.
require "fileutils"
require "yaml"

# Deploy commands like README.md's, covering every ops file: manifest, ops
# files in order, the -v variables they need.
DEPLOYS = [
  ["pgcell-lite.yml", [], []],
  ["pgcell-lite.yml", %w[use-existing-etcd.yml scale-cells.yml seed-credentials.yml], %w[etcd_endpoints cell_instances]],
  ["pgcell-lite.yml", %w[cell-resources.yml patroni-ttl.yml scale-routers.yml],
   %w[cell_capacity cell_member_memory_mb cell_disk_mb patroni_ttl router_grace_ms router_instances]],
  ["pgcell-multi-zone.yml", [], %w[router_host]],
  ["pgcell-multi-zone.yml", %w[use-existing-etcd.yml], %w[router_host etcd_endpoints]],
  ["pgcell-multi-zone.yml", %w[router-with-broker.yml use-existing-etcd.yml scale-cells.yml scale-routers.yml],
   %w[router_host etcd_endpoints cell_instances router_instances]],
].freeze

# The part of go-patch (the format of BOSH ops files) these ops files use:
# replace and remove; map keys, `name=value` array matchers, indexes, `-` to
# append, `?` to create what is missing from there on.
module GoPatch
  module_function

  def apply(doc, ops)
    ops.each do |op|
      tokens = op.fetch("path").split("/", -1)
      raise ArgumentError, "path #{op['path']} does not start with /" unless tokens.shift == ""
      optional = false
      parent = tokens[0..-2].reduce(doc) do |node, token|
        optional ||= token.end_with?("?")
        step(node, token.chomp("?"), optional, op)
      end
      optional ||= tokens.last.end_with?("?")
      change(parent, tokens.last.chomp("?"), optional, op)
    end
    doc
  end

  def step(node, key, optional, op)
    case node
    when Array
      found = find(node, key, op)
      return found unless found.nil?
      raise ArgumentError, "#{op['path']}: nothing matches #{key}" unless optional && key.include?("=")
      node << matcher_hash(key)
      node.last
    when Hash
      return node[key] if node.key?(key)
      raise ArgumentError, "#{op['path']}: no key #{key}" unless optional
      node[key] = {}
    else
      raise ArgumentError, "#{op['path']}: #{key} is below a scalar"
    end
  end

  def change(node, key, optional, op)
    value = Marshal.load(Marshal.dump(op["value"]))
    case [op.fetch("type"), node]
    in ["replace", Hash]
      raise ArgumentError, "#{op['path']}: no key #{key}" unless optional || node.key?(key)
      node[key] = value
    in ["replace", Array]
      return node << value if key == "-"
      index = index_of(node, key, op)
      raise ArgumentError, "#{op['path']}: nothing matches #{key}" if index.nil? && !optional
      index.nil? ? node << value : node[index] = value
    in ["remove", Hash]
      raise ArgumentError, "#{op['path']}: no key #{key}" unless optional || node.key?(key)
      node.delete(key)
    in ["remove", Array]
      index = index_of(node, key, op)
      raise ArgumentError, "#{op['path']}: nothing matches #{key}" if index.nil? && !optional
      node.delete_at(index) unless index.nil?
    else
      raise ArgumentError, "#{op['path']}: cannot #{op['type']} here"
    end
  end

  def find(array, key, op)
    index = index_of(array, key, op)
    index.nil? ? nil : array[index]
  end

  def index_of(array, key, op)
    return Integer(key) if key.match?(/\A\d+\z/)
    raise ArgumentError, "#{op['path']}: #{key} is not an index or a name=value matcher" unless key.include?("=")
    field, value = key.split("=", 2)
    array.index { |e| e.is_a?(Hash) && e[field].to_s == value }
  end

  def matcher_hash(key)
    field, value = key.split("=", 2)
    { field => value }
  end
end

class ManifestCheck
  attr_reader :count

  def initialize(release, jobs, out_dir)
    @release = release
    @jobs = jobs
    @out_dir = out_dir
    @count = 0
  end

  def run(failures)
    dir = File.join(@release, "manifests")
    used = DEPLOYS.flat_map { |_, ops, _| ops }.uniq
    Dir.children(File.join(dir, "operations")).sort.each do |ops|
      failures << "manifests/operations/#{ops}: in no combination of DEPLOYS (test/manifests.rb)" unless used.include?(ops)
    end
    DEPLOYS.each do |manifest, ops, vars|
      where = ([manifest] + ops).join(" -o ")
      begin
        doc = GoPatch.apply(load_yaml(File.join(dir, manifest)),
                            ops.flat_map { |o| load_yaml(File.join(dir, "operations", o)) })
      rescue ArgumentError => e
        failures << "#{where}: #{e.message}"
        next
      end
      @count += 1
      write(manifest, ops, doc)
      check(doc, vars, where, failures)
    end
  end

  private

  def write(manifest, ops, doc)
    name = ([File.basename(manifest, ".yml")] + ops.map { |o| File.basename(o, ".yml") }).join("+")
    path = File.join(@out_dir, "manifests", "#{name}.yml")
    FileUtils.mkdir_p(File.dirname(path))
    File.write(path, doc.to_yaml)
  end

  def check(doc, vars, where, failures)
    groups = doc.fetch("instance_groups")
    ours = groups.flat_map do |group|
      group.fetch("jobs").select { |j| j["release"] == "pgcell" }.map { |j| [group, j] }
    end
    ours.each do |group, job|
      spec = @jobs[job["name"]]
      next failures << "#{where}: #{group['name']} runs #{job['name']}, which the release lacks" if spec.nil?
      at = "#{where}: #{group['name']}/#{job['name']}"
      declared = spec["properties"] || {}
      undeclared(job["properties"] || {}, declared).each { |name| failures << "#{at}: property #{name} is not in the spec" }
      declared.each do |name, decl|
        next if (decl || {}).key?("default") || !dig_dotted(job["properties"] || {}, name).nil?
        failures << "#{at}: required property #{name} is not set"
      end
      failures << "#{at}: no etcd (neither pgcell.etcd.endpoints nor an etcd job)" unless etcd?(doc, ours, job)
      if job["name"] == "pgcell-cell" && group["jobs"].none? { |j| j["name"] == "docker" }
        failures << "#{at}: no docker job on the cell's VMs"
      end
    end
    used = variables(doc)
    generated = (doc["variables"] || []).map { |v| v["name"] }
    (used - generated - vars).each { |v| failures << "#{where}: ((#{v})) is neither generated nor passed with -v" }
    (vars - used).each { |v| failures << "#{where}: -v #{v} is passed but not used" }
  end

  # Dotted names of the manifest's properties that the spec does not declare.
  def undeclared(props, declared, prefix = nil)
    props.flat_map do |key, value|
      name = [prefix, key].compact.join(".")
      next [] if declared.key?(name)
      value.is_a?(Hash) ? undeclared(value, declared, name) : [name]
    end
  end

  def etcd?(doc, ours, job)
    endpoints = ->(j) { !Array(dig_dotted(j["properties"] || {}, "pgcell.etcd.endpoints")).empty? }
    return true if endpoints.(job)
    return true if doc["instance_groups"].any? { |g| g["jobs"].any? { |j| j["name"] == "etcd" && j["release"] == "pgcell" } }
    # The broker follows the routers' etcd (see its spec).
    job["name"] == "pgcell-broker" && ours.any? { |_, j| j["name"] == "pgcell-router" && endpoints.(j) }
  end

  def variables(node)
    case node
    when Hash then node.values.flat_map { |v| variables(v) }.uniq
    when Array then node.flat_map { |v| variables(v) }.uniq
    # ((cert.private_key)) uses variable `cert`.
    when String then node.scan(/\(\(([^()]+)\)\)/).flatten.map { |v| v.split(".").first }
    else []
    end
  end
end
