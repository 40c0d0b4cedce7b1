#!/usr/bin/env ruby
# Renders every template of every job in deploy/bosh/jobs as the BOSH director
# would (spec defaults under the manifest's properties, spec.*, links), for
# each scenario of sample-properties.yml, and checks what it can without BOSH:
# specs are complete, scripts pass `bash -n`, YAML parses, manifests and ops
# files fit the jobs (manifests.rb). TOML is left to tests/bosh_templates.rs,
# which parses it into pgcell's own config structs.
#
#   ruby deploy/bosh/test/render.rb OUT_DIR    # writes OUT_DIR/<scenario>/<job>/<file>
#
# Ruby's standard library only, so it runs wherever `ruby` does.
require "erb"
require "fileutils"
require "json"
require "open3"
require "yaml"
require_relative "manifests"

RELEASE = File.expand_path("..", __dir__)
UNSET = Object.new.freeze

class RenderError < StandardError; end

def load_yaml(path)
  YAML.safe_load(File.read(path), aliases: true) || {}
end

def dig_dotted(hash, name)
  name.split(".").reduce(hash) { |node, key| node.is_a?(Hash) ? node[key] : nil }
end

# A job's properties as the director resolves them: only those its spec
# declares, the manifest's value, else the spec's default.
class Properties
  def initialize(owner, declared, manifest)
    @owner = owner
    @declared = declared || {}
    @manifest = manifest || {}
  end

  def lookup(name)
    raise RenderError, "#{@owner}: property #{name} is not declared in the spec" unless @declared.key?(name)
    value = dig_dotted(@manifest, name)
    value.nil? ? (@declared[name] || {})["default"] : value
  end

  def p(names, default = UNSET)
    names = Array(names)
    names.each do |name|
      value = lookup(name)
      return value unless value.nil?
    end
    return default unless default.equal?(UNSET)
    raise RenderError, "#{@owner}: property #{names.join(' or ')} is required: " \
                       "the manifest gives no value and the spec no default"
  end

  def if_p(names)
    values = names.map { |name| lookup(name) }
    return ElseBlock.new(true) if values.any?(&:nil?)
    yield(*values)
    ElseBlock.new(false)
  end
end

# What `if_p`/`if_link` return, so templates can chain `.else { ... }`.
class ElseBlock
  def initialize(active)
    @active = active
  end

  def else
    yield if @active
  end
end

Spec = Struct.new(:name, :index, :id, :az, :address, :ip, :deployment, :bootstrap, keyword_init: true)
LinkInstance = Struct.new(:name, :index, :id, :az, :address, :bootstrap, keyword_init: true)

class Link
  attr_reader :instances

  def initialize(name, instances, properties)
    @name = name
    @instances = instances
    @properties = properties
  end

  def p(name, default = UNSET)
    @properties.p(name, default)
  end

  def if_p(*names, &block)
    @properties.if_p(names, &block)
  end

  # The BOSH DNS name of the whole group (what `link(...).address` gives).
  def address
    "q-s0.#{@name}.default.pgcell.bosh"
  end
end

# The binding a template is rendered in: the methods BOSH gives templates.
class Context
  attr_reader :spec

  def initialize(job, properties, spec, links)
    @job = job
    @properties = properties
    @spec = spec
    @links = links
  end

  def p(names, default = UNSET)
    @properties.p(names, default)
  end

  def if_p(*names, &block)
    @properties.if_p(names, &block)
  end

  def link(name)
    @links.fetch(name) { raise RenderError, "#{@job}: link #{name} is not provided in this deployment" }
  end

  def if_link(name)
    return ElseBlock.new(true) unless @links.key?(name)
    yield @links[name]
    ElseBlock.new(false)
  end

  # Templates may raise anything (BOSH fails the deploy with the message).
  def render(path)
    ERB.new(File.read(path), trim_mode: "-").tap { |erb| erb.filename = path }.result(binding)
  rescue RenderError
    raise
  rescue StandardError => e
    raise RenderError, "#{@job}: #{File.basename(path)}: #{e.message}"
  end
end

class Renderer
  def initialize(sample, out_dir)
    @sample = sample
    @out_dir = out_dir
    @jobs = Dir[File.join(RELEASE, "jobs", "*")].sort.to_h do |dir|
      [File.basename(dir), load_yaml(File.join(dir, "spec"))]
    end
  end

  attr_reader :jobs

  # Renders one scenario: {job => {dest => text}}, or {job => RenderError}.
  def scenario(name, jobs)
    jobs.to_h do |job, given|
      spec = @jobs.fetch(job) { raise "scenario #{name}: no job #{job} in the release" }
      [job, render_job(job, spec, given, links_for(name, job, spec, jobs))]
    rescue RenderError => e
      [job, e]
    end
  end

  def write(scenario, job, files)
    files.each do |dest, text|
      path = File.join(@out_dir, scenario, job, dest)
      FileUtils.mkdir_p(File.dirname(path))
      File.write(path, text)
    end
  end

  private

  def render_job(job, spec, given, links)
    props = Properties.new(job, spec["properties"], given["properties"])
    instance = Spec.new(**@sample.fetch("spec").merge("name" => given.fetch("instance_group"))
                                 .merge(given["spec"] || {}).transform_keys(&:to_sym))
    context = Context.new(job, props, instance, links)
    dir = File.join(RELEASE, "jobs", job)
    files = spec.fetch("templates").to_h { |src, dest| [dest, context.render(File.join(dir, "templates", src))] }
    files.merge("monit" => context.render(File.join(dir, "monit")))
  end

  # Links as the director wires them: by type, from the jobs of the same deployment.
  def links_for(scenario, job, spec, jobs)
    (spec["consumes"] || []).each_with_object({}) do |consumed, links|
      provider = jobs.keys.find do |other|
        (@jobs[other]["provides"] || []).any? { |p| p["type"] == consumed["type"] }
      end
      if provider.nil?
        next if consumed["optional"]
        raise RenderError, "#{job}: needs link #{consumed['name']}, which no job of #{scenario} provides"
      end
      provided = @jobs[provider]["provides"].find { |p| p["type"] == consumed["type"] }
      shared = (provided["properties"] || []).to_h { |n| [n, @jobs[provider]["properties"][n]] }
      instances = @sample.fetch("link_instances").fetch(provided["name"]).map do |i|
        LinkInstance.new(**i.transform_keys(&:to_sym))
      end
      props = Properties.new("link #{provided['name']} (from #{provider})", shared, jobs[provider]["properties"])
      links[consumed["name"]] = Link.new(provided["name"], instances, props)
    end
  end
end

# Checks that need no scenario: every spec property documented, every file
# named exists and every template file is named, every script parses.
def check_release(jobs, failures)
  jobs.each do |job, spec|
    dir = File.join(RELEASE, "jobs", job)
    failures << "#{job}: spec has no description" if spec["description"].to_s.strip.empty?
    (spec["properties"] || {}).each do |name, decl|
      failures << "#{job}: property #{name} has no description" if (decl || {})["description"].to_s.strip.empty?
    end
    listed = spec.fetch("templates").keys.sort
    present = Dir.children(File.join(dir, "templates")).sort
    failures << "#{job}: templates/ holds #{present - listed} not in spec" unless (present - listed).empty?
    failures << "#{job}: spec names missing templates #{listed - present}" unless (listed - present).empty?
    failures << "#{job}: no monit file" unless File.file?(File.join(dir, "monit"))
    (spec["packages"] || []).each do |pkg|
      failures << "#{job}: package #{pkg} does not exist" unless File.file?(File.join(RELEASE, "packages", pkg, "spec"))
    end
  end
  blob_script = File.read(File.join(RELEASE, "scripts", "add-blobs.sh"))
  Dir[File.join(RELEASE, "packages", "*", "spec")].sort.each do |path|
    (load_yaml(path)["files"] || []).each do |file|
      next if File.file?(File.join(RELEASE, "src", file)) || blob_script.include?(file)
      failures << "#{path}: #{file} is neither in src/ nor a blob that scripts/add-blobs.sh adds"
    end
  end
  scripts = Dir[File.join(RELEASE, "packages", "*", "packaging")] + Dir[File.join(RELEASE, "{src,scripts}", "**", "*.sh")]
  scripts.sort.each { |path| check_bash(path, File.read(path), failures) }
end

def check_bash(name, text, failures)
  _, err, status = Open3.capture3("bash", "-n", stdin_data: text)
  failures << "#{name}: bash -n: #{err.strip}" unless status.success?
end

def check_rendered(where, files, failures)
  files.each do |dest, text|
    name = "#{where}/#{dest}"
    if text.start_with?("#!") && text.lines.first.include?("bash")
      check_bash(name, text, failures)
    elsif dest.end_with?(".yml", ".yaml")
      begin
        failures << "#{name}: YAML is not a mapping" unless YAML.safe_load(text).is_a?(Hash)
      rescue Psych::Exception => e
        failures << "#{name}: YAML: #{e.message}"
      end
    end
  end
  pidfile = files.fetch("monit")[/with pidfile (\S+)/, 1]
  failures << "#{where}/monit: no pidfile" if pidfile.nil?
  unless files.fetch("bin/ctl", "").include?(pidfile.to_s)
    failures << "#{where}: bin/ctl does not write monit's pidfile #{pidfile}"
  end
end

out_dir = ARGV.fetch(0) { abort "usage: #{$PROGRAM_NAME} OUT_DIR" }
sample = load_yaml(File.join(__dir__, "sample-properties.yml"))
renderer = Renderer.new(sample, out_dir)
failures = []
check_release(renderer.jobs, failures)

rendered = 0
sample.fetch("scenarios").each do |scenario, jobs|
  expected_errors = jobs.delete("expect_error") || {}
  renderer.scenario(scenario, jobs).each do |job, result|
    where = "#{scenario}/#{job}"
    if (expected_error = expected_errors[job])
      if !result.is_a?(RenderError)
        failures << "#{where}: rendered, but should fail with #{expected_error.inspect}"
      elsif !result.message.include?(expected_error)
        failures << "#{where}: failed with #{result.message.inspect}, expected #{expected_error.inspect}"
      end
    elsif result.is_a?(RenderError)
      failures << "#{where}: #{result.message}"
    else
      renderer.write(scenario, job, result)
      check_rendered(where, result, failures)
      rendered += result.size
    end
  end
end
untested = renderer.jobs.keys - sample.fetch("scenarios").values.flat_map(&:keys)
failures << "jobs rendered by no scenario: #{untested.join(', ')}" unless untested.empty?

manifests = ManifestCheck.new(RELEASE, renderer.jobs, out_dir)
manifests.run(failures)

if failures.empty?
  puts "rendered #{rendered} files of #{renderer.jobs.size} jobs into #{out_dir}; " \
       "checked #{manifests.count} manifest and ops file combinations"
else
  warn failures.map { |f| "FAIL #{f}" }
  exit 1
end
